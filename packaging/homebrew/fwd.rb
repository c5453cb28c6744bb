# Homebrew formula for fwd. Builds from the release source tarball (the
# workspace, e.g. `git archive --prefix=fwd-0.1.0/ v0.1.0 | gzip`) with
# `cargo install`; `brew services start fwd` runs fwdd as a LaunchAgent
# (macOS) or a systemd user unit (Linux) generated from the service block,
# with the same settings as launchd/com.fwd.fwdd.plist.
#
# Release step: replace url and sha256 with the published tarball's.
#
# The UDP relay fwdd uploads to a Docker host must be a static Linux
# executable, which a Mac cannot build. The source tarball carries the ones
# the Linux release tarballs have (bin/fwd-udp-relay-linux-*) in relays/:
#   git archive --prefix=fwd-0.1.0/relays/ --add-file=DIR/fwd-udp-relay-linux-x86_64 \
#     --add-file=DIR/fwd-udp-relay-linux-aarch64 --prefix=fwd-0.1.0/ v0.1.0 | gzip
# A tarball without them still installs; fwdd then reports UDP ports as
# unsupported.
class Fwd < Formula
  desc "Published ports of remote Docker containers on localhost over one SSH connection"
  homepage "https://example.invalid/fwd"
  url "https://example.invalid/fwd/fwd-0.1.0.tar.gz"
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  license "Apache-2.0"

  depends_on "rust" => :build

  def install
    system "cargo", "install", *std_cargo_args(path: "crates/fwdd")
    system "cargo", "install", *std_cargo_args(path: "crates/fwdctl")
    # Beside fwdd, where it looks for them (bin/, also as linked into
    # HOMEBREW_PREFIX/bin and opt_bin: fwdd does not resolve its own symlink
    # on macOS).
    relays = Dir["relays/fwd-udp-relay-linux-*"]
    bin.install relays unless relays.empty?

    # Homebrew never overwrites a file in etc that the user changed; an
    # upgrade puts the new example next to it as fwdd.toml.default.
    (etc/"fwd").install "config/fwdd.toml"
    pkgshare.install "launchd/com.fwd.fwdd.plist", "launchd/fwdd.newsyslog.conf"
    doc.install "README.md", "docs/operations.md", "docs/control-api.md"

    # Completions and manual pages, made by the binaries just built
    # (`fwdctl completions bash`, ..., `fwdctl man DIR`).
    %w[fwdd fwdctl].each do |b|
      generate_completions_from_executable(bin/b, "completions", base_name: b)
      system bin/b, "man", buildpath/"man1"
    end
    man1.install Dir[buildpath/"man1/*.1"]
  end

  def post_install
    (var/"log/fwd").mkpath
    # An upgrade: a running fwdd (started from opt_bin, which now names the
    # new version) takes the new binary over in place, keeping every port,
    # the ssh master and open tunnels. Not running, or refused: nothing is
    # changed here (`brew services restart fwd` then runs the new binary).
    return unless File.exist?(opt_bin/"fwdctl")

    if Kernel.system(opt_bin/"fwdctl", "upgrade", err: File::NULL)
      ohai "fwdd took the new binary over in place"
    end
  end

  service do
    run [opt_bin/"fwdd", "--config", etc/"fwd/fwdd.toml"]
    # Restart after a crash or a failed start, not after a clean exit.
    keep_alive successful_exit: false
    run_type :immediate # RunAtLoad
    throttle_interval 10
    environment_variables PATH: std_service_path_env, FWD_LOG_FORMAT: "text"
    log_path var/"log/fwd/fwdd.log"
    error_log_path var/"log/fwd/fwdd.log"
  end

  def caveats
    <<~EOS
      Before `brew services start fwd`:
        1. Edit #{etc}/fwd/fwdd.toml (one [[host]] per Docker host) and check it:
             fwdd check-config #{etc}/fwd/fwdd.toml
        2. ssh must log in to every host without a prompt (fwdd uses BatchMode=yes):
           a key without a passphrase, or one in the ssh-agent of your GUI login
           (a LaunchAgent gets launchd's SSH_AUTH_SOCK, not your shell's).
        3. Each host's key must already be in ~/.ssh/known_hosts: get it with
           ssh-keyscan and compare the fingerprint with the host's own
           (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub there).
      Status: fwdctl status. Logs: #{var}/log/fwd/fwdd.log; to bound them:
        sed -e "s|/Users/USER/Library/Logs/fwd|#{var}/log/fwd|" -e "s|USER|$USER|g" \\
          #{opt_pkgshare}/fwdd.newsyslog.conf | sudo tee /etc/newsyslog.d/fwd.conf
      Guide: #{doc}/operations.md
    EOS
  end

  test do
    assert_match version.to_s, shell_output("#{bin}/fwdd --version")
    # No daemon running: fwdctl reports "unreachable" with exit status 2.
    shell_output("#{bin}/fwdctl --runtime-dir #{testpath}/run status", 2)
    assert_match "status", shell_output("#{bin}/fwdctl completions bash")
    assert_path_exists man1/"fwdctl-status.1"
    # Relays the tarball carried: Linux programs, which a Mac cannot run,
    # so only that they are there.
    Dir[bin/"fwd-udp-relay-linux-*"].each do |relay|
      assert_predicate Pathname(relay), :executable?
    end
  end
end
