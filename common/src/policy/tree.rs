//! Policy files as spanned trees: parsing, line/column positions, and the layered merge that remembers which file
//! (and which line) set every key last.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::PolicyError;

/// One policy file: its name (as shown in errors) and its text.
#[derive(Debug)]
pub(super) struct Source {
    pub name: PathBuf,
    text: String,
    /// Byte offset of the start of every line.
    line_starts: Vec<usize>,
}

impl Source {
    pub fn new(name: PathBuf, text: String) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source { name, text, line_starts }
    }

    /// The 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset).max(1);
        let start = self.line_starts[line - 1];
        let column = self.text.get(start..offset).map_or(offset - start, |s| s.chars().count()) + 1;
        (line, column)
    }
}

/// Where something was written: the index of the file in the order applied, and a 1-based line and column.
///
/// The derived order (file, then line, then column) is the order in which things were set: the greater of two
/// positions is the one set last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct At {
    pub file: usize,
    pub line: usize,
    pub column: usize,
}

impl At {
    fn new(sources: &[Source], file: usize, span: &Range<usize>) -> Self {
        let (line, column) = sources[file].line_col(span.start);
        At { file, line, column }
    }
}

/// A value as written in a policy file.
#[derive(Debug, Clone)]
pub(super) enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(toml::value::Datetime),
    Array(Vec<Node>),
    Table(Tree),
}

/// A value and where it was set.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub val: Val,
    /// Where the key that set it is (for array elements: the element itself).
    pub key_at: At,
    /// Where the value is (for a table: its `[header]`, its `{`, or the first dotted key that opened it), in the
    /// file that mentioned it last.
    pub at: At,
}

pub(super) type Tree = BTreeMap<String, Node>;

/// Parses every source. Returns the trees in order, or every syntax error of every file.
pub(super) fn parse_all(sources: &[Source]) -> Result<Vec<Tree>, Vec<PolicyError>> {
    let mut trees = Vec::with_capacity(sources.len());
    let mut errors = Vec::new();
    for (file, source) in sources.iter().enumerate() {
        let (table, syntax) = DeTable::parse_recoverable(&source.text);
        if syntax.is_empty() {
            let mut conv = Converter { sources, file, errors: &mut errors };
            trees.push(conv.table("", table.into_inner()));
        } else {
            for e in syntax {
                let span = e.span().unwrap_or(0..0);
                let (line, column) = source.line_col(span.start);
                let mut message = format!("invalid TOML: {}", e.message().trim());
                if message.ends_with("duplicate key") {
                    if let Some(key) = source.text.get(span).filter(|k| !k.is_empty() && !k.contains('\n')) {
                        message.push_str(&format!(" {key} (a key or table may be set only once per file)"));
                    }
                }
                errors.push(PolicyError { file: source.name.clone(), line, column, key: String::new(), message });
            }
        }
    }
    if errors.is_empty() {
        Ok(trees)
    } else {
        Err(errors)
    }
}

struct Converter<'a> {
    sources: &'a [Source],
    file: usize,
    errors: &'a mut Vec<PolicyError>,
}

impl Converter<'_> {
    fn at(&self, span: &Range<usize>) -> At {
        At::new(self.sources, self.file, span)
    }

    fn table(&mut self, path: &str, table: DeTable<'_>) -> Tree {
        let mut tree = Tree::new();
        for (key, value) in table {
            let key_at = self.at(&key.span());
            let key = key.into_inner().into_owned();
            if let Some(node) = self.node(&join(path, &key), key_at, value) {
                tree.insert(key, node);
            }
        }
        tree
    }

    fn node(&mut self, path: &str, key_at: At, value: Spanned<DeValue<'_>>) -> Option<Node> {
        let at = self.at(&value.span());
        let val = match value.into_inner() {
            DeValue::String(s) => Val::Str(s.into_owned()),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(i) => Val::Int(i),
                Err(_) => return self.invalid(path, at, format!("integer {i} is out of range")),
            },
            DeValue::Float(f) => match f.as_str().parse::<f64>() {
                Ok(v) => Val::Float(v),
                Err(_) => return self.invalid(path, at, format!("invalid float {f}")),
            },
            DeValue::Boolean(b) => Val::Bool(b),
            DeValue::Datetime(d) => Val::Datetime(d),
            DeValue::Array(items) => {
                let mut nodes = Vec::new();
                for item in items {
                    let item_at = self.at(&item.span());
                    nodes.extend(self.node(path, item_at, item));
                }
                Val::Array(nodes)
            }
            DeValue::Table(t) => Val::Table(self.table(path, t)),
        };
        Some(Node { val, key_at, at })
    }

    fn invalid(&mut self, path: &str, at: At, message: String) -> Option<Node> {
        self.errors.push(PolicyError {
            file: self.sources[self.file].name.clone(),
            line: at.line,
            column: at.column,
            key: path.to_string(),
            message,
        });
        None
    }
}

/// `parent.key`, with `key` quoted when it is not a bare TOML key (`probe."boiler temp"`).
pub(super) fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let key = if bare { key.to_string() } else { format!("{key:?}") };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// Merges `later` into `base`: tables merge key by key (recursively), anything else replaces what was there.
pub(super) fn merge(base: &mut Tree, later: Tree) {
    for (key, node) in later {
        match base.get_mut(&key) {
            Some(existing) => match (&mut existing.val, node.val) {
                (Val::Table(old), Val::Table(new)) => {
                    merge(old, new);
                    existing.key_at = node.key_at;
                    existing.at = node.at;
                }
                (_, val) => *existing = Node { val, key_at: node.key_at, at: node.at },
            },
            None => {
                base.insert(key, node);
            }
        }
    }
}
