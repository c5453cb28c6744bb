#!/bin/sh
# After new fwd binaries are installed (Debian postinst, install.sh): a
# running fwdd takes the new binary over in place - `fwdctl upgrade` keeps
# every port, the ssh masters and every open tunnel. A daemon that cannot
# (too old to know `upgrade`, or the new binary is refused) is restarted
# instead, so it runs the new binary either way. Not running: nothing to do.
#
#   upgrade-running.sh [BINDIR]     (default /usr/bin; the root's control
#                                    socket is /run/fwdd/control.sock)
set -u
bindir=${1:-/usr/bin}

if ! systemctl is-active --quiet fwdd.service; then
  exit 0
fi
if "$bindir/fwdctl" upgrade; then
  exit 0
fi
echo "fwd: fwdd could not take the new binary over in place; restarting it (open forwarded connections end)" >&2
systemctl try-restart fwdd.service
