//! A host's name: part of its engine socket's file name, so a name and
//! never a path.

/// The longest host name, in bytes.
pub const HOST_NAME_MAX: usize = 64;
/// The characters a host name may have besides ASCII letters and digits.
const HOST_NAME_PUNCTUATION: &str = "._-@:%";

/// Whether `name` may name a host. A host's name becomes part of its engine
/// socket's file name (`docker-<name>.sock`) and of what `fwdctl env HOST`
/// prints, so it is a name and never a path: 1 to 64 bytes of ASCII letters,
/// digits and `. _ - @ : %` (the last three are in names made from
/// `ssh://user@host:port`), not starting with `.` or `-`, without `..`.
/// `Err` says what is wrong.
pub fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > HOST_NAME_MAX {
        return Err(format!(
            "is {} bytes long, more than {HOST_NAME_MAX}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !HOST_NAME_PUNCTUATION.contains(*c))
    {
        return Err(format!("has {c:?}, which a host name may not have"));
    }
    if name.starts_with(['.', '-']) {
        return Err("starts with '.' or '-'".into());
    }
    if name.contains("..") {
        return Err("has \"..\"".into());
    }
    Ok(())
}

/// The name of a host given only by its URL (`--host`, or a `[[host]]`
/// without `name`): `user@host[:port]`, made a valid name if it is not
/// one (other characters become `_`, a leading `.` or `-` and `..` too, and
/// a name too long keeps its first bytes and a hash of the whole).
pub fn derived_host_name(destination: &str, port: Option<u16>) -> String {
    let whole = match port {
        Some(p) => format!("{destination}:{p}"),
        None => destination.to_string(),
    };
    if check_host_name(&whole).is_ok() {
        return whole;
    }
    let mut name: String = whole
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || HOST_NAME_PUNCTUATION.contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    while name.contains("..") {
        name = name.replace("..", "._");
    }
    if name.starts_with(['.', '-']) || name.is_empty() {
        name.insert(0, '_');
    }
    if name.len() > HOST_NAME_MAX {
        // FNV-1a: stable across builds, unlike std's hasher.
        let hash = whole.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        // Every character is ASCII now: any byte is a boundary.
        name.truncate(HOST_NAME_MAX - 9);
        name.push_str(&format!("-{:08x}", hash as u32));
    }
    name
}
