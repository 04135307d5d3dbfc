//! Field paths for parser errors: serde-saphyr reports where an error is,
//! not which field it is in, so the text is parsed again into a [`Node`]
//! tree that keeps every key's and value's position.

use std::fmt;

use serde::{Deserialize, Deserializer, de};
use serde_saphyr::{DuplicateKeyPolicy, Location, Spanned};

/// The path (`services[1].vip`) of the last node starting at or before
/// `target`, found by parsing `text` again into a [`Node`] tree. `None`
/// when the text is not valid YAML or the position is unknown.
pub(super) fn field_path_at(text: &str, target: Location) -> Option<String> {
    if target.line() == 0 {
        return None;
    }
    let options = serde_saphyr::options! {
        with_snippet: false,
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
    };
    let root: Node = serde_saphyr::from_str_with_options(text, options).ok()?;
    let mut best = None;
    root.find((target.line(), target.column()), "", &mut best);
    best
}

/// The shape of a YAML document with the position of every key and value.
enum Node {
    Map(Vec<(Spanned<String>, Spanned<Self>)>),
    Seq(Vec<Spanned<Self>>),
    Scalar,
}

impl Node {
    /// Walks the tree in document order, remembering in `best` the path of
    /// the last key or value that starts at or before `target`.
    fn find(&self, target: (u64, u64), path: &str, best: &mut Option<String>) {
        let starts_before = |location: &Location| (location.line(), location.column()) <= target;
        match self {
            Self::Map(entries) => {
                for (key, value) in entries {
                    let child = if path.is_empty() {
                        key.value.clone()
                    } else {
                        format!("{path}.{}", key.value)
                    };
                    if starts_before(&key.referenced) || starts_before(&value.referenced) {
                        *best = Some(child.clone());
                    }
                    value.value.find(target, &child, best);
                }
            }
            Self::Seq(items) => {
                for (index, item) in items.iter().enumerate() {
                    let child = format!("{path}[{index}]");
                    if starts_before(&item.referenced) {
                        *best = Some(child.clone());
                    }
                    item.value.find(target, &child, best);
                }
            }
            Self::Scalar => {}
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// Builds a [`Node`] from any YAML value.
struct NodeVisitor;

impl<'de> de::Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Node::Map(entries))
    }
}
