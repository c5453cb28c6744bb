//! `fwdctl names`: every container served by name, with its address,
//! ports and where connections go; the names refused and why.

use fwd_proto::term::for_terminal;
use fwd_proto::NameStatus;

/// The table people read. Every string from the remote side passes
/// through `for_terminal`.
pub fn render(names: &[NameStatus]) -> String {
    if names.is_empty() {
        return "no container is served by name (names = true in a [[host]] of fwdd's \
                configuration turns it on)\n"
            .to_string();
    }
    let rows: Vec<[String; 5]> = names
        .iter()
        .map(|n| {
            [
                if n.names.is_empty() {
                    "-".to_string()
                } else {
                    for_terminal(&n.names.join(", ")).into_owned()
                },
                n.address.map_or_else(|| "-".to_string(), |a| a.to_string()),
                if n.ports.is_empty() {
                    "-".to_string()
                } else {
                    n.ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                },
                format!(
                    "{} ({})",
                    for_terminal(&n.container_name),
                    for_terminal(&n.host)
                ),
                match (&n.state[..], &n.to) {
                    ("serving", Some(to)) => format!(
                        "-> {} · {}/{} conn",
                        for_terminal(to),
                        n.connections_open,
                        n.connections_total
                    ),
                    _ => for_terminal(&n.state).into_owned(),
                },
            ]
        })
        .collect();
    let header = ["NAMES", "ADDRESS", "PORTS", "CONTAINER (HOST)", "STATE"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.map(String::from));
    for r in &rows {
        out.push_str(&line(r));
    }
    for n in names {
        if let Some(reason) = &n.reason {
            out.push_str(&format!(
                "  {}: {}\n",
                for_terminal(&n.container_name),
                for_terminal(reason)
            ));
        }
        for r in &n.refused {
            out.push_str(&format!(
                "  {}: name {} refused: {}\n",
                for_terminal(&n.container_name),
                for_terminal(&r.name),
                for_terminal(&r.why)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(names: &[&str], state: &str) -> NameStatus {
        NameStatus {
            host: "ci".into(),
            container_id: "0123456789ab".into(),
            container_name: "shop-db-1".into(),
            address: Some("127.77.3.4".parse().expect("ip")),
            names: names.iter().map(|s| s.to_string()).collect(),
            ports: vec![5432],
            to: Some("172.18.0.2".into()),
            state: state.into(),
            reason: None,
            refused: vec![fwd_proto::RefusedName {
                name: "\"x\\n1.2.3.4 github.com\"".into(),
                why: "not a valid host name (RFC 1123)".into(),
            }],
            connections_open: 1,
            connections_total: 3,
        }
    }

    #[test]
    fn a_table_of_names_and_what_was_refused() {
        let out = render(&[name(&["db", "db.shop"], "serving")]);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAMES"), "{out}");
        assert!(lines[1].contains("db, db.shop"), "{out}");
        assert!(lines[1].contains("127.77.3.4"), "{out}");
        assert!(lines[1].contains("-> 172.18.0.2 · 1/3 conn"), "{out}");
        assert!(lines[2].contains("refused: not a valid host name"), "{out}");
        assert_eq!(lines.len(), 3, "no raw newline from a remote string: {out}");
    }

    #[test]
    fn nothing_named_says_how_to_turn_it_on() {
        assert!(render(&[]).contains("names = true"));
    }
}
