//! YAML loading for every file Kiln reads (`kiln.yaml`, `dvc.yaml`, params, metrics, vars):
//! `marked_yaml` nodes, each with its position, built from `yaml-rust2`'s events.
//!
//! `marked_yaml`'s own loader refuses anchors, yet GitLab-style files share blocks with anchors,
//! aliases and merge keys (`<<: *defaults`). This loader expands them, within a budget: an alias
//! bomb (each alias naming a list of aliases, a billion nodes from a few lines) is refused as
//! soon as what the aliases expand to passes [`ALIAS_BUDGET`] nodes, before it is built. An
//! expanded node keeps the position of the text it was copied from, so a mistake inside an
//! anchored block is reported where the block is written.

use std::collections::HashMap;
use std::fmt;
use std::str::Chars;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::{Marker, Node, Span};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker as ScanMarker, TScalarStyle};

use crate::diagnostic::{Diagnostic, Location, SourceFile};

/// How many nodes aliases may add to a file, all aliases together. Far above what shared blocks
/// in a real pipeline add; far below what an alias bomb would.
pub const ALIAS_BUDGET: usize = 100_000;
/// How deeply collections may nest: deeper is no pipeline, and would only exhaust the stack.
pub const MAX_DEPTH: usize = 64;

/// How to load a file.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Options {
    /// A key written twice in one mapping is an error (else the last one wins).
    pub duplicate_keys_are_errors: bool,
    /// Quoted scalars are marked as not coercible, so that `"1.10"` stays text.
    pub quoted_is_text: bool,
}

/// Why a YAML text could not be loaded, and where (1-based line, column in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    pub message: String,
    pub hint: Option<&'static str>,
    pub position: Option<(usize, usize)>,
}

impl YamlError {
    fn at(marker: &Marker, message: impl Into<String>, hint: Option<&'static str>) -> Self {
        YamlError {
            message: message.into(),
            hint,
            position: Some((marker.line(), marker.column())),
        }
    }

    /// The error as a diagnostic pointing into `source`.
    pub fn diagnostic(&self, source: &SourceFile) -> Diagnostic {
        let location = self.position.map(|(line, column)| {
            let offset = source.offset(line, column);
            let range = if source.text[offset..].starts_with('\t') {
                offset..offset + 1
            } else {
                source.token_at(offset)
            };
            Location {
                file: source.clone(),
                range,
            }
        });
        let diagnostic = Diagnostic::new(self.message.clone()).at(location);
        match self.hint {
            Some(hint) => diagnostic.hint(hint),
            None => diagnostic,
        }
    }
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "line {line}, column {column}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Loads the first document of `text`, whose top level must be a mapping (an empty text is an
/// empty mapping).
pub(crate) fn load(text: &str, options: Options) -> Result<Node, YamlError> {
    let mut builder = Builder {
        text,
        parser: Parser::new_from_str(text),
        options,
        anchors: HashMap::new(),
        expanded: 0,
    };
    builder.document()
}

/// An anchored node and how many nodes it stands for.
struct Anchored {
    node: Node,
    size: usize,
}

struct Builder<'t> {
    text: &'t str,
    parser: Parser<Chars<'t>>,
    options: Options,
    anchors: HashMap<usize, Anchored>,
    /// Nodes added by aliases so far.
    expanded: usize,
}

impl Builder<'_> {
    fn next(&mut self) -> Result<(Event, Marker), YamlError> {
        match self.parser.next_token() {
            Ok((event, mark)) => Ok((event, marker(mark))),
            Err(error) => Err(self.scan_error(error.info(), marker(*error.marker()))),
        }
    }

    /// The scanner reports a tab used as indentation at the end of the token before it, often
    /// on the line above: point at the tab itself.
    fn scan_error(&self, info: &str, at: Marker) -> YamlError {
        if info.contains("tab")
            && let Some((line, column)) = indentation_tab(self.text, at.line())
        {
            return YamlError {
                message: "a tab is used for indentation".into(),
                hint: Some("YAML indents with spaces only: replace the tab with spaces"),
                position: Some((line, column)),
            };
        }
        YamlError::at(
            &at,
            format!("invalid YAML: {info}"),
            Some("check the indentation and quoting on this line"),
        )
    }

    fn document(&mut self) -> Result<Node, YamlError> {
        let mut root = None;
        loop {
            let (event, mark) = self.next()?;
            match event {
                Event::StreamStart | Event::DocumentEnd => {}
                Event::DocumentStart if root.is_some() => {
                    return Err(YamlError::at(
                        &mark,
                        "the file holds more than one YAML document",
                        Some(
                            "remove the `---` line and everything after it, or merge the documents",
                        ),
                    ));
                }
                Event::DocumentStart => {
                    let (event, mark) = self.next()?;
                    let node = match event {
                        Event::MappingStart(..) => self.node(event, mark, 0)?,
                        _ => {
                            return Err(YamlError::at(
                                &mark,
                                "the file must be a mapping (`key: value` lines) at the top level",
                                None,
                            ));
                        }
                    };
                    root = Some(node);
                }
                Event::StreamEnd => {
                    return Ok(root.unwrap_or_else(|| {
                        Node::from(MarkedMappingNode::new_empty(Span::new_with_marks(
                            mark, mark,
                        )))
                    }));
                }
                _ => unreachable!("the parser opens a document before any node"),
            }
        }
    }

    /// The node that `event` starts, read to its end.
    fn node(&mut self, event: Event, mark: Marker, depth: usize) -> Result<Node, YamlError> {
        if depth > MAX_DEPTH {
            return Err(YamlError::at(
                &mark,
                format!("values nest more than {MAX_DEPTH} levels deep"),
                None,
            ));
        }
        let (anchor, node, size) = match event {
            Event::Alias(id) => {
                let anchored = self.anchors.get(&id).ok_or_else(|| {
                    YamlError::at(&mark, "alias to an anchor that is not defined", None)
                })?;
                self.expanded += anchored.size;
                if self.expanded > ALIAS_BUDGET {
                    return Err(YamlError::at(
                        &mark,
                        format!("YAML aliases here expand to more than {ALIAS_BUDGET} values"),
                        Some(
                            "an alias copies its anchor's whole value: share smaller blocks, or write the values out",
                        ),
                    ));
                }
                return Ok(anchored.node.clone());
            }
            Event::Scalar(value, style, anchor, tag) => {
                if tag.is_some() {
                    return Err(tag_error(&mark));
                }
                let mut scalar = MarkedScalarNode::new(Span::new_start(mark), value);
                if self.options.quoted_is_text {
                    scalar.set_coerce(matches!(style, TScalarStyle::Plain));
                }
                (anchor, Node::from(scalar), 1)
            }
            Event::SequenceStart(anchor, tag) => {
                if tag.is_some() {
                    return Err(tag_error(&mark));
                }
                let mut items = Vec::new();
                let mut size = 1;
                let end = loop {
                    let (event, item_mark) = self.next()?;
                    if event == Event::SequenceEnd {
                        break item_mark;
                    }
                    let item = self.node(event, item_mark, depth + 1)?;
                    size += node_size(&item);
                    items.push(item);
                };
                let span = Span::new_with_marks(mark, end);
                (
                    anchor,
                    Node::from(MarkedSequenceNode::new(span, items)),
                    size,
                )
            }
            Event::MappingStart(anchor, tag) => {
                if tag.is_some() {
                    return Err(tag_error(&mark));
                }
                let (mapping, size) = self.mapping(mark, depth)?;
                (anchor, Node::from(mapping), size)
            }
            Event::MappingEnd
            | Event::SequenceEnd
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd
            | Event::Nothing => unreachable!("the parser only starts nodes here"),
        };
        if anchor != 0 {
            self.anchors.insert(
                anchor,
                Anchored {
                    node: node.clone(),
                    size,
                },
            );
        }
        Ok(node)
    }

    /// A mapping whose start was just read, merge keys applied: keys written in the mapping win
    /// over merged ones, and among merged mappings the first to name a key wins.
    fn mapping(
        &mut self,
        start: Marker,
        depth: usize,
    ) -> Result<(MarkedMappingNode, usize), YamlError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let end = loop {
            let (event, key_mark) = self.next()?;
            if event == Event::MappingEnd {
                break key_mark;
            }
            let merge =
                matches!(&event, Event::Scalar(text, TScalarStyle::Plain, 0, None) if text == "<<");
            let key = match self.node(event, key_mark, depth + 1)? {
                Node::Scalar(key) => key,
                _ => {
                    return Err(YamlError::at(
                        &key_mark,
                        "mapping keys must be plain strings",
                        None,
                    ));
                }
            };
            let (event, value_mark) = self.next()?;
            let value = self.node(event, value_mark, depth + 1)?;
            if merge {
                for (key, value) in merged(&value, &value_mark)? {
                    if !index.contains_key(key.as_str()) {
                        index.insert(key.as_str().to_string(), entries.len());
                        entries.push(Entry {
                            key,
                            value,
                            merged: true,
                        });
                    }
                }
                continue;
            }
            match index.get(key.as_str()) {
                Some(&at) if !entries[at].merged && self.options.duplicate_keys_are_errors => {
                    return Err(YamlError::at(
                        &key_mark,
                        format!("`{}` is defined twice", key.as_str()),
                        Some("remove one of the two entries"),
                    ));
                }
                Some(&at) => {
                    entries[at] = Entry {
                        key,
                        value,
                        merged: false,
                    };
                }
                None => {
                    index.insert(key.as_str().to_string(), entries.len());
                    entries.push(Entry {
                        key,
                        value,
                        merged: false,
                    });
                }
            }
        };
        let mut mapping = MarkedMappingNode::new_empty(Span::new_with_marks(start, end));
        let mut size = 1;
        for entry in entries {
            size += 1 + node_size(&entry.value);
            mapping.insert(entry.key, entry.value);
        }
        Ok((mapping, size))
    }
}

struct Entry {
    key: MarkedScalarNode,
    value: Node,
    /// Came from a merge key: a key written in the mapping replaces it.
    merged: bool,
}

/// The entries a merge key's value brings: those of a mapping, or of each mapping of a list, the
/// first to name a key winning.
fn merged(value: &Node, at: &Marker) -> Result<Vec<(MarkedScalarNode, Node)>, YamlError> {
    let wrong = || {
        YamlError::at(
            at,
            "a merge key `<<` takes a mapping or a list of mappings",
            Some("write `<<: *anchor` (or `<<: [*a, *b]`) where each anchor names a mapping"),
        )
    };
    let sources: Vec<&MarkedMappingNode> = match value {
        Node::Mapping(mapping) => vec![mapping],
        Node::Sequence(items) => items
            .iter()
            .map(|item| item.as_mapping().ok_or_else(wrong))
            .collect::<Result<_, _>>()?,
        Node::Scalar(_) => return Err(wrong()),
    };
    let mut entries: Vec<(MarkedScalarNode, Node)> = Vec::new();
    for source in sources {
        for (key, value) in source.iter() {
            if !entries.iter().any(|(known, _)| known == key) {
                entries.push((key.clone(), value.clone()));
            }
        }
    }
    Ok(entries)
}

/// How many nodes a tree holds (mapping keys included).
fn node_size(node: &Node) -> usize {
    match node {
        Node::Scalar(_) => 1,
        Node::Sequence(items) => 1 + items.iter().map(node_size).sum::<usize>(),
        Node::Mapping(mapping) => {
            1 + mapping
                .iter()
                .map(|(_, value)| 1 + node_size(value))
                .sum::<usize>()
        }
    }
}

fn tag_error(at: &Marker) -> YamlError {
    YamlError::at(
        at,
        "YAML tags (`!name`) are not supported",
        Some("remove the tag: Kiln reads values as plain YAML"),
    )
}

/// `marked_yaml`'s marker for a scanner position: 1-based line, 1-based column.
fn marker(mark: ScanMarker) -> Marker {
    Marker::new(0, mark.index(), mark.line(), mark.col() + 1)
}

/// The first tab in the indentation of a line, from `line` (1-based) on: its line and 1-based
/// column.
fn indentation_tab(text: &str, line: usize) -> Option<(usize, usize)> {
    text.split('\n')
        .enumerate()
        .skip(line.saturating_sub(1))
        .find_map(|(index, content)| {
            let indent: &str = &content[..content.len() - content.trim_start().len()];
            indent
                .chars()
                .position(|c| c == '\t')
                .map(|column| (index + 1, column + 1))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Node, YamlError> {
        load(
            text,
            Options {
                duplicate_keys_are_errors: true,
                quoted_is_text: false,
            },
        )
    }

    fn scalar<'n>(node: &'n Node, path: &[&str]) -> &'n str {
        let mut node = node;
        for step in path {
            node = match node {
                Node::Mapping(mapping) => mapping.get_node(step).unwrap(),
                Node::Sequence(items) => &items[step.parse::<usize>().unwrap()],
                Node::Scalar(_) => panic!("no `{step}` in a scalar"),
            };
        }
        node.as_scalar().unwrap().as_str()
    }

    #[test]
    fn anchors_aliases_and_merge_keys_expand() {
        let node = parse(
            "defaults: &defaults\n  cmd: echo\n  deps: [a, b]\nfirst:\n  <<: *defaults\n  cmd: true\nsecond: *defaults\nlist: [&x 1, *x]\n",
        )
        .unwrap();
        assert_eq!(scalar(&node, &["first", "cmd"]), "true");
        assert_eq!(scalar(&node, &["first", "deps", "1"]), "b");
        assert_eq!(scalar(&node, &["second", "cmd"]), "echo");
        assert_eq!(scalar(&node, &["list", "1"]), "1");
        // Merged keys keep the position of the text they come from: line 3, `deps: [a, b]`.
        let first = node.as_mapping().unwrap().get_mapping("first").unwrap();
        let keys: Vec<&str> = first.keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, ["cmd", "deps"]);
        let deps = first.get_node("deps").unwrap();
        assert_eq!(deps.span().start().unwrap().line(), 3);
    }

    #[test]
    fn merges_a_list_and_the_first_mapping_wins() {
        let node =
            parse("a: &a {x: 1, y: 1}\nb: &b {y: 2, z: 2}\nc:\n  <<: [*a, *b]\n  z: 3\n").unwrap();
        assert_eq!(scalar(&node, &["c", "x"]), "1");
        assert_eq!(scalar(&node, &["c", "y"]), "1");
        assert_eq!(scalar(&node, &["c", "z"]), "3");
        let error = parse("a: &a [1]\nb:\n  <<: *a\n").unwrap_err();
        assert_eq!(error.position, Some((3, 7)));
        assert!(error.message.contains("merge key"), "{error}");
        // A quoted `<<` is an ordinary key.
        let node = parse("\"<<\": 1\n").unwrap();
        assert_eq!(scalar(&node, &["<<"]), "1");
    }

    #[test]
    fn an_alias_bomb_is_refused_before_it_is_built() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
        for level in 1..10 {
            let previous = format!("*a{}", level - 1);
            let items = [previous.as_str(); 9].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{items}]\n"));
        }
        let started = std::time::Instant::now();
        let error = parse(&text).unwrap_err();
        assert!(error.message.contains("expand to more than"), "{error}");
        assert!(error.hint.is_some());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // The first levels fit the budget: they are what a shared block looks like.
        let small: String = text.lines().take(4).map(|l| format!("{l}\n")).collect();
        assert!(parse(&small).is_ok());
    }

    #[test]
    fn a_tab_in_the_indentation_is_reported_on_its_own_line() {
        let error = parse("models:\n  m:\n    dir: x\n\tstages: {}\n").unwrap_err();
        assert_eq!(error.position, Some((4, 1)), "{error}");
        assert_eq!(error.message, "a tab is used for indentation");
        let error = parse("a:\n  b: 1\n \tc: 2\n").unwrap_err();
        assert_eq!(error.position, Some((3, 2)), "{error}");
    }

    #[test]
    fn shape_mistakes_are_located() {
        let error = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(error.position, Some((2, 1)));
        assert!(parse("- a\n").unwrap_err().message.contains("mapping"));
        assert!(parse("a: !!str 1\n").unwrap_err().message.contains("tags"));
        assert!(
            parse("a: 1\n---\nb: 2\n")
                .unwrap_err()
                .message
                .contains("more than one")
        );
        for depth in [300, 100_000] {
            let deep = format!("a: {}{}\n", "[".repeat(depth), "]".repeat(depth));
            assert!(parse(&deep).is_err());
        }
        let mut deep = String::new();
        for level in 0..1000 {
            deep.push_str(&format!("{}k{level}:\n", " ".repeat(level)));
        }
        let error = parse(&deep).unwrap_err();
        assert!(error.message.contains("nest"), "{error}");
        assert!(
            parse("")
                .unwrap()
                .as_mapping()
                .is_some_and(|m| m.is_empty())
        );
        assert!(
            parse("a: *nowhere\n")
                .unwrap_err()
                .message
                .starts_with("invalid YAML")
        );
    }
}
