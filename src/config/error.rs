//! Config errors that point at the place in the file that caused them.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::env::Expanded;

/// One problem found in a config file, located at a line and column (both 1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found in one load; a config with any of them is never used.
#[derive(Debug, Clone, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Turns byte offsets in one source file into located errors.
pub struct Locator<'a> {
    file: &'a Path,
    source: &'a str,
    /// Set when offsets are in the text with `${NAME}`s expanded, not in `source`.
    expansion: Option<&'a Expanded>,
    pub errors: Vec<ConfigError>,
}

impl<'a> Locator<'a> {
    pub fn new(file: &'a Path, source: &'a str) -> Self {
        Self {
            file,
            source,
            expansion: None,
            errors: Vec::new(),
        }
    }

    /// A locator for offsets in `expansion.text` that reports them in `source`, the
    /// text as written.
    pub fn expanded(file: &'a Path, source: &'a str, expansion: &'a Expanded) -> Self {
        Self {
            expansion: Some(expansion),
            ..Self::new(file, source)
        }
    }

    /// Line and column (1-based, columns in characters) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = self
            .expansion
            .map_or(offset, |e| e.original_offset(offset))
            .min(self.source.len());
        let before = self.source.get(..offset).unwrap_or(self.source);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    pub fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.position(span.start);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    /// Records a problem at `span`.
    pub fn push(&mut self, span: Range<usize>, message: impl Into<String>) {
        let e = self.error_at(span, message);
        self.errors.push(e);
    }

    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// An error about a whole file (unreadable, missing) rather than a place in it.
pub fn file_error(file: &Path, message: impl Into<String>) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        file: file.to_path_buf(),
        line: 1,
        column: 1,
        message: message.into(),
    }])
}
