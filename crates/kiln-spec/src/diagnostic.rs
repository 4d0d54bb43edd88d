//! Diagnostics: what is wrong in a project file, where (file:line:column) and how to fix it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};

/// A file Kiln read, kept whole so that diagnostics can quote it.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as it is shown to the user (relative to the project root when possible).
    pub path: PathBuf,
    pub text: Arc<str>,
}

impl SourceFile {
    pub fn new(path: impl Into<PathBuf>, text: impl Into<Arc<str>>) -> Self {
        Self {
            path: path.into(),
            text: text.into(),
        }
    }

    /// A file read as bytes, which must be UTF-8. When it is not, the diagnostic names the
    /// first bad byte by line and column, quoting the line with the byte replaced.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self, Diagnostic> {
        let path = path.into();
        match String::from_utf8(bytes) {
            Ok(text) => Ok(Self::new(path, text)),
            Err(error) => {
                let bad = error.utf8_error().valid_up_to();
                let byte = error.as_bytes()[bad];
                // The valid prefix reads the same in the lossy text, so `bad` is an offset
                // into it too, at the replacement character.
                let file = Self::new(
                    path.clone(),
                    String::from_utf8_lossy(error.as_bytes()).into_owned(),
                );
                let location = Location {
                    range: bad..bad + '\u{FFFD}'.len_utf8(),
                    file,
                };
                let (line, column) = location.line_column();
                Err(Diagnostic::new(format!(
                    "`{}` is not UTF-8: byte `{byte:#04x}` at line {line}, column {column}",
                    path.display()
                ))
                .at(Some(location))
                .hint("save the file as UTF-8"))
            }
        }
    }

    /// Byte offset of a 1-based line and column (columns count characters).
    pub fn offset(&self, line: usize, column: usize) -> usize {
        let mut offset = 0;
        for (index, text_line) in self.text.split_inclusive('\n').enumerate() {
            if index + 1 == line {
                let within = text_line
                    .char_indices()
                    .nth(column.saturating_sub(1))
                    .map_or(text_line.trim_end_matches('\n').len(), |(i, _)| i);
                return offset + within;
            }
            offset += text_line.len();
        }
        self.text.len()
    }

    /// Line and 1-based column of a byte offset.
    pub fn line_column(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    /// The byte range of the YAML token that starts at `offset`: a quoted string, a flow item,
    /// or a plain scalar up to the end of the line.
    pub fn token_at(&self, offset: usize) -> std::ops::Range<usize> {
        let rest = &self.text[offset.min(self.text.len())..];
        let line = rest.split('\n').next().unwrap_or("");
        let len = match line.chars().next() {
            Some(quote @ ('"' | '\'')) => line[1..].find(quote).map_or(line.len(), |end| end + 2),
            Some(open @ ('{' | '[')) => {
                let close = if open == '{' { '}' } else { ']' };
                let mut depth = 0usize;
                line.char_indices()
                    .find_map(|(i, c)| {
                        if c == open {
                            depth += 1;
                        } else if c == close {
                            depth -= 1;
                            if depth == 0 {
                                return Some(i + 1);
                            }
                        }
                        None
                    })
                    .unwrap_or(line.trim_end().len())
            }
            _ => {
                let end = line
                    .find([',', ']', '}', '#'])
                    .filter(|&i| i > 0)
                    .unwrap_or(line.len());
                let token = line[..end].trim_end();
                // `key: value`, or `key:` ending its line: underline the key alone.
                token
                    .find(": ")
                    .or_else(|| token.strip_suffix(':').map(str::len))
                    .unwrap_or(token.len())
            }
        };
        offset..offset + len.max(1)
    }
}

/// A place in a source file, with the byte range to underline.
#[derive(Debug, Clone)]
pub struct Location {
    pub file: SourceFile,
    pub range: std::ops::Range<usize>,
}

impl Location {
    pub fn line_column(&self) -> (usize, usize) {
        self.file.line_column(self.range.start)
    }
}

/// One mistake found in a project file.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub message: String,
    pub location: Option<Location>,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            location: None,
            hint: None,
        }
    }

    pub fn at(mut self, location: Option<Location>) -> Self {
        self.location = location;
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// `file:line:column`, or just the message's subject when there is no location.
    pub fn position(&self) -> Option<String> {
        self.location.as_ref().map(|location| {
            let (line, column) = location.line_column();
            format!("{}:{line}:{column}", location.file.path.display())
        })
    }

    /// Renders the diagnostic as rustc does: message, `--> file:line:column`, the line with the
    /// offending text underlined, and the hint.
    pub fn render(&self, color: bool) -> String {
        let renderer = if color {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        let path;
        let mut group = Group::with_title(Level::ERROR.primary_title(self.message.as_str()));
        if let Some(location) = &self.location {
            path = location.file.path.display().to_string();
            group = group.element(
                Snippet::source(&*location.file.text)
                    .path(path.as_str())
                    .annotation(AnnotationKind::Primary.span(location.range.clone())),
            );
        }
        if let Some(hint) = &self.hint {
            group = group.element(Level::HELP.message(hint.as_str()));
        }
        renderer.render(&[group])
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position() {
            Some(position) => write!(f, "{position}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Shows `path` relative to `root` when it lies inside it.
pub fn display_path(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root).unwrap_or(path).to_path_buf()
}
