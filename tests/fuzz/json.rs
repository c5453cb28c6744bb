//! Structure-aware mutations of JSON seeds, for the targets whose input is
//! the engine's JSON or the handover document: a node replaced by a value of
//! another type, a hostile string, a huge number or a small tree; an entry
//! removed or renamed; an object, array or string widened past a parser's
//! bound. Included with `#[path]` next to mutate.rs (needs serde_json).

#![allow(dead_code)]

use std::sync::Arc;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};

#[derive(Clone, Debug)]
pub enum JsonMutation {
    Replace(Index, Value),
    /// An entry of an object or an array.
    Remove(Index, Index),
    /// A key of an object.
    Rename(Index, Index, String),
    /// An object's entries, an array's elements or a string's text copied
    /// until there are this many.
    Widen(Index, usize),
}

/// The nodes of `v`, itself included.
pub fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

/// The `n`th node in pre-order.
fn nth_mut(v: &mut Value, mut n: usize) -> Option<&mut Value> {
    if n == 0 {
        return Some(v);
    }
    n -= 1;
    let children: Box<dyn Iterator<Item = &mut Value>> = match v {
        Value::Array(a) => Box::new(a.iter_mut()),
        Value::Object(o) => Box::new(o.values_mut()),
        _ => return None,
    };
    for c in children {
        let k = count(c);
        if n < k {
            return nth_mut(c, n);
        }
        n -= k;
    }
    None
}

/// Replaces the `n`th node in pre-order; `false` if there are fewer.
pub fn replace_nth(v: &mut Value, n: usize, with: Value) -> bool {
    match nth_mut(v, n) {
        Some(node) => {
            *node = with;
            true
        }
        None => false,
    }
}

fn leaf(grow_max: usize) -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        proptest::num::f64::NORMAL.prop_map(Value::from),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(65536)),
        "\\PC{0,24}".prop_map(Value::from),
        "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{202e}/.:]{1,8}".prop_map(Value::from),
        (1..=grow_max.max(1)).prop_map(|n| Value::from("a".repeat(n))),
        "[0-9a-f]{1,70}".prop_map(Value::from),
        "[0-9a-fA-F]{64}".prop_map(Value::from),
        "[0-9]{1,6}/(tcp|udp|sctp|TCP|)".prop_map(Value::from),
        "[0-9]{1,5}".prop_map(Value::from),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?(Z|[+-][0-9]{2}:[0-9]{2}|)"
            .prop_map(Value::from),
        any::<std::net::IpAddr>().prop_map(|ip| Value::from(ip.to_string())),
        Just(json!("0.0.0.0")),
        Just(json!("::")),
        Just(json!({})),
        Just(json!([])),
    ]
}

/// Any value: a leaf, or a small tree of them.
pub fn any_value(grow_max: usize) -> impl Strategy<Value = Value> {
    leaf(grow_max).prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[A-Za-z]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

pub fn json_mutation(grow_max: usize) -> impl Strategy<Value = JsonMutation> {
    prop_oneof![
        4 => (any::<Index>(), any_value(grow_max)).prop_map(|(i, v)| JsonMutation::Replace(i, v)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(i, j)| JsonMutation::Remove(i, j)),
        1 => (any::<Index>(), any::<Index>(), "[A-Za-z]{0,10}")
            .prop_map(|(i, j, k)| JsonMutation::Rename(i, j, k)),
        1 => (any::<Index>(), 2..=grow_max.max(2)).prop_map(|(i, n)| JsonMutation::Widen(i, n)),
    ]
}

pub fn apply_json(v: &mut Value, m: &JsonMutation) {
    let total = count(v);
    let node = |i: &Index| i.index(total);
    match m {
        JsonMutation::Replace(i, with) => {
            if let Some(n) = nth_mut(v, node(i)) {
                *n = with.clone();
            }
        }
        JsonMutation::Remove(i, j) => match nth_mut(v, node(i)) {
            Some(Value::Array(a)) if !a.is_empty() => {
                a.remove(j.index(a.len()));
            }
            Some(Value::Object(o)) if !o.is_empty() => {
                let key = o.keys().nth(j.index(o.len())).cloned();
                if let Some(k) = key {
                    o.remove(&k);
                }
            }
            _ => {}
        },
        JsonMutation::Rename(i, j, to) => {
            if let Some(Value::Object(o)) = nth_mut(v, node(i)) {
                let key = (!o.is_empty()).then(|| o.keys().nth(j.index(o.len())).cloned());
                if let Some(Some(k)) = key {
                    if let Some(val) = o.remove(&k) {
                        o.insert(to.clone(), val);
                    }
                }
            }
        }
        JsonMutation::Widen(i, n) => match nth_mut(v, node(i)) {
            Some(Value::Array(a)) if !a.is_empty() => {
                let first = a[0].clone();
                a.resize(*n, first);
            }
            Some(Value::Object(o)) if !o.is_empty() => {
                let (k, first) = o
                    .iter()
                    .next()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .unwrap_or_default();
                for x in o.len()..*n {
                    o.insert(format!("{k}{x}"), first.clone());
                }
            }
            Some(Value::String(s)) if !s.is_empty() => {
                let copy = s.clone();
                while s.len() < *n {
                    s.push_str(&copy);
                }
            }
            _ => {}
        },
    }
}

/// A JSON seed (each must parse) with up to `max_mutations` structural
/// mutations, serialised again.
pub fn json_mutated(
    seeds: Vec<Vec<u8>>,
    max_mutations: usize,
    grow_max: usize,
) -> impl Strategy<Value = Vec<u8>> {
    let values: Arc<Vec<Value>> = Arc::new(
        seeds
            .iter()
            .map(|s| serde_json::from_slice(s).expect("a JSON seed parses"))
            .collect(),
    );
    (
        any::<Index>(),
        proptest::collection::vec(json_mutation(grow_max), 0..=max_mutations),
    )
        .prop_map(move |(seed, ms)| {
            let mut v = values[seed.index(values.len())].clone();
            for m in &ms {
                apply_json(&mut v, m);
            }
            serde_json::to_vec(&v).expect("a value serialises")
        })
}
