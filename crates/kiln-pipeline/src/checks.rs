//! Data checks on CSV files: row count bounds and per-column rules (type, min, max, allowed values,
//! missing values), run on the file a stage just wrote.
//!
//! The file is streamed one record at a time, so its size does not matter. Row numbers in messages
//! are the ones a spreadsheet shows: the header is row 1, the first data row is row 2 (a quoted
//! value spanning several lines still counts as one row).

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use kiln_registry::CheckRule;
use kiln_spec::RelPath;
use kiln_spec::project::{ColumnRule, ColumnType, DataCheck, RowBounds};

/// How many offending rows a message names; the rest are counted.
const SAMPLE_ROWS: usize = 5;
/// Offending values longer than this are cut in messages.
const SAMPLE_VALUE_CHARS: usize = 40;
/// Allowed values listed in a message before the list is cut.
const LISTED_ALLOWED_VALUES: usize = 10;
/// Spellings of "no value" (compared case-insensitively, after trimming).
const MISSING_MARKERS: [&str; 5] = ["", "na", "nan", "null", "none"];

/// The verdict on one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOutcome {
    /// The column the rule is about; `None` for the row count.
    pub column: Option<String>,
    pub rule: CheckRule,
    pub passed: bool,
    /// One line for the user, e.g. ``column `x`: 3 values above max 10 (rows 4, 17, 90)``.
    pub message: String,
}

/// The verdicts of all rules of one [`DataCheck`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub file: RelPath,
    /// Data rows read (the header is not counted).
    pub rows: u64,
    /// The row count first, then each column in the order the check declares them.
    pub outcomes: Vec<RuleOutcome>,
}

impl CheckReport {
    /// True when every rule passed.
    pub fn passed(&self) -> bool {
        self.outcomes.iter().all(|outcome| outcome.passed)
    }

    pub fn failures(&self) -> impl Iterator<Item = &RuleOutcome> {
        self.outcomes.iter().filter(|outcome| !outcome.passed)
    }
}

impl fmt::Display for CheckReport {
    /// A summary line, then one line per failed rule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed = self.failures().count();
        if failed == 0 {
            write!(
                f,
                "data checks on `{}` passed ({} rules, {})",
                self.file,
                self.outcomes.len(),
                plural(self.rows, "row")
            )
        } else {
            write!(
                f,
                "data checks on `{}` failed ({failed} of {} rules)",
                self.file,
                self.outcomes.len()
            )?;
            for failure in self.failures() {
                write!(f, "\n  {}", failure.message)?;
            }
            Ok(())
        }
    }
}

/// Why a check could not run at all (as opposed to a rule that failed).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("`{file}` does not exist, so its data checks cannot run")]
    NotFound { file: RelPath, path: PathBuf },
    #[error("cannot read `{file}` for its data checks")]
    Read {
        file: RelPath,
        #[source]
        source: io::Error,
    },
    #[error("`{file}` is not a valid CSV file: line {line}: {reason}")]
    Malformed {
        file: RelPath,
        line: u64,
        reason: String,
    },
}

impl CheckError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            CheckError::NotFound { file, .. } => Some(format!(
                "the stage declares checks on `{file}` but did not write it: fix the stage's \
                 command, or the path under `checks`"
            )),
            CheckError::Malformed { .. } => Some(
                "every line needs as many fields as the header, and the file must be UTF-8"
                    .to_string(),
            ),
            CheckError::Read { .. } => None,
        }
    }
}

/// Runs `check` on its file under `root` (the project root).
pub fn run_check(root: &Path, check: &DataCheck) -> Result<CheckReport, CheckError> {
    let path = check.file.to_path(root);
    let file = File::open(&path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => CheckError::NotFound {
            file: check.file.clone(),
            path: path.clone(),
        },
        _ => CheckError::Read {
            file: check.file.clone(),
            source,
        },
    })?;
    let delimiter = match path.extension().and_then(|ext| ext.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("tsv") => b'\t',
        _ => b',',
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        // A ragged file is broken; silently reading short rows as missing values would hide it.
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(file);
    let csv_error = |error: csv::Error| to_check_error(&check.file, error);
    let header = reader.headers().map_err(csv_error)?.clone();

    // One entry per declared column, `None` when the header lacks it.
    let mut columns: Vec<Option<ColumnState>> = check
        .columns
        .iter()
        .map(|(name, rule)| {
            let index = header.iter().position(|field| field == name)?;
            Some(ColumnState::new(name, rule, index))
        })
        .collect();

    let mut record = csv::StringRecord::new();
    let mut rows: u64 = 0;
    while reader.read_record(&mut record).map_err(csv_error)? {
        rows += 1;
        // The header is row 1.
        let row = rows + 1;
        for column in columns.iter_mut().flatten() {
            column.observe(row, record.get(column.index).unwrap_or(""));
        }
    }

    let mut outcomes = Vec::new();
    outcomes.extend(rows_outcome(&check.rows, rows));
    for ((name, _), column) in check.columns.iter().zip(&columns) {
        match column {
            Some(column) => column.outcomes(rows, &mut outcomes),
            None => outcomes.push(RuleOutcome {
                column: Some(name.clone()),
                rule: CheckRule::Present,
                passed: false,
                message: format!(
                    "column `{name}` is missing from `{}` ({})",
                    check.file,
                    describe_header(&header)
                ),
            }),
        }
    }
    Ok(CheckReport {
        file: check.file.clone(),
        rows,
        outcomes,
    })
}

fn to_check_error(file: &RelPath, error: csv::Error) -> CheckError {
    let line = error.position().map_or(0, csv::Position::line);
    let reason = match error.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!(
            "found {}, expected {expected_len} like the lines before",
            plural(*len, "field")
        ),
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_string(),
        csv::ErrorKind::Io(_) => {
            return match error.into_kind() {
                csv::ErrorKind::Io(source) => CheckError::Read {
                    file: file.clone(),
                    source,
                },
                _ => unreachable!("the kind was just matched as Io"),
            };
        }
        _ => error.to_string(),
    };
    CheckError::Malformed {
        file: file.clone(),
        line,
        reason,
    }
}

fn describe_header(header: &csv::StringRecord) -> String {
    if header.is_empty() {
        "the file is empty".to_string()
    } else {
        format!("columns: {}", header.iter().collect::<Vec<_>>().join(", "))
    }
}

fn rows_outcome(bounds: &RowBounds, rows: u64) -> Option<RuleOutcome> {
    let expected = match (bounds.min, bounds.max) {
        (None, None) => return None,
        (Some(min), None) => format!("at least {min}"),
        (None, Some(max)) => format!("at most {max}"),
        (Some(min), Some(max)) => format!("between {min} and {max}"),
    };
    let passed =
        bounds.min.is_none_or(|min| rows >= min) && bounds.max.is_none_or(|max| rows <= max);
    let message = if passed {
        format!("{} (expected {expected})", plural(rows, "row"))
    } else {
        format!("{}, expected {expected}", plural(rows, "row"))
    };
    Some(RuleOutcome {
        column: None,
        rule: CheckRule::Rows,
        passed,
        message,
    })
}

/// Rows that broke one rule: how many, and the first few with their values.
#[derive(Debug, Default)]
struct Offenders {
    count: u64,
    samples: Vec<(u64, String)>,
}

impl Offenders {
    fn add(&mut self, row: u64, value: &str) {
        self.count += 1;
        if self.samples.len() < SAMPLE_ROWS {
            let mut shown: String = value.chars().take(SAMPLE_VALUE_CHARS).collect();
            if shown.len() < value.len() {
                shown.push('…');
            }
            self.samples.push((row, shown));
        }
    }

    /// `rows 4, 17, 90` (and how many more).
    fn rows(&self) -> String {
        let rows: Vec<String> = self
            .samples
            .iter()
            .map(|(row, _)| row.to_string())
            .collect();
        let noun = if self.count == 1 { "row" } else { "rows" };
        format!("{noun} {}{}", rows.join(", "), self.more())
    }

    /// ``row 4: `abc`, row 9: `x` `` (and how many more).
    fn rows_with_values(&self) -> String {
        let rows: Vec<String> = self
            .samples
            .iter()
            .map(|(row, value)| format!("row {row}: `{value}`"))
            .collect();
        format!("{}{}", rows.join(", "), self.more())
    }

    fn more(&self) -> String {
        let more = self.count - self.samples.len() as u64;
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    }
}

/// What one column's rules saw so far.
struct ColumnState<'a> {
    name: &'a str,
    rule: &'a ColumnRule,
    index: usize,
    allowed: Option<HashSet<&'a str>>,
    missing: Offenders,
    wrong_type: Offenders,
    /// Values that are no number although `min` or `max` needs one (and no numeric type rule
    /// reports them already).
    not_a_number: Offenders,
    below_min: Offenders,
    above_max: Offenders,
    not_allowed: Offenders,
}

impl<'a> ColumnState<'a> {
    fn new(name: &'a str, rule: &'a ColumnRule, index: usize) -> Self {
        Self {
            name,
            rule,
            index,
            allowed: rule
                .values
                .as_ref()
                .map(|values| values.iter().map(String::as_str).collect()),
            missing: Offenders::default(),
            wrong_type: Offenders::default(),
            not_a_number: Offenders::default(),
            below_min: Offenders::default(),
            above_max: Offenders::default(),
            not_allowed: Offenders::default(),
        }
    }

    /// Checks one value. Missing values are only counted: the other rules are about the values
    /// that are there.
    fn observe(&mut self, row: u64, value: &str) {
        if is_missing(value) {
            self.missing.add(row, value);
            return;
        }
        if let Some(kind) = self.rule.kind
            && !has_type(kind, value)
        {
            self.wrong_type.add(row, value);
        }
        if self.rule.min.is_some() || self.rule.max.is_some() {
            match value.parse::<f64>() {
                Ok(number) => {
                    if self.rule.min.is_some_and(|min| number < min) {
                        self.below_min.add(row, value);
                    }
                    if self.rule.max.is_some_and(|max| number > max) {
                        self.above_max.add(row, value);
                    }
                }
                Err(_) if self.checks_numeric_type() => {}
                Err(_) => self.not_a_number.add(row, value),
            }
        }
        if let Some(allowed) = &self.allowed
            && !allowed.contains(value)
        {
            self.not_allowed.add(row, value);
        }
    }

    /// True when the type rule already reports every value that is no number.
    fn checks_numeric_type(&self) -> bool {
        matches!(self.rule.kind, Some(ColumnType::Int | ColumnType::Float))
    }

    fn outcomes(&self, rows: u64, out: &mut Vec<RuleOutcome>) {
        let name = self.name;
        let mut push = |rule: CheckRule, passed: bool, message: String| {
            out.push(RuleOutcome {
                column: Some(name.to_string()),
                rule,
                passed,
                message,
            });
        };
        push(
            CheckRule::Present,
            true,
            format!("column `{name}` is present"),
        );
        if let Some(kind) = self.rule.kind {
            let kind = kind.name();
            if self.wrong_type.count == 0 {
                push(
                    CheckRule::Type,
                    true,
                    format!("column `{name}`: all values are {kind}"),
                );
            } else {
                push(
                    CheckRule::Type,
                    false,
                    format!(
                        "column `{name}`: {} not {kind} ({})",
                        plural_verb(self.wrong_type.count, "value"),
                        self.wrong_type.rows_with_values()
                    ),
                );
            }
        }
        if self.not_a_number.count > 0 {
            push(
                CheckRule::Type,
                false,
                format!(
                    "column `{name}`: {}, which min and max need ({})",
                    if self.not_a_number.count == 1 {
                        "1 value is not a number".to_string()
                    } else {
                        format!("{} values are not numbers", self.not_a_number.count)
                    },
                    self.not_a_number.rows_with_values()
                ),
            );
        }
        if let Some(min) = self.rule.min {
            let passed = self.below_min.count == 0;
            let message = if passed {
                format!("column `{name}`: no value below min {min}")
            } else {
                format!(
                    "column `{name}`: {} below min {min} ({})",
                    plural(self.below_min.count, "value"),
                    self.below_min.rows()
                )
            };
            push(CheckRule::Min, passed, message);
        }
        if let Some(max) = self.rule.max {
            let passed = self.above_max.count == 0;
            let message = if passed {
                format!("column `{name}`: no value above max {max}")
            } else {
                format!(
                    "column `{name}`: {} above max {max} ({})",
                    plural(self.above_max.count, "value"),
                    self.above_max.rows()
                )
            };
            push(CheckRule::Max, passed, message);
        }
        if let Some(values) = &self.rule.values {
            let listed = list_allowed(values);
            let passed = self.not_allowed.count == 0;
            let message = if passed {
                format!("column `{name}`: all values in {listed}")
            } else {
                format!(
                    "column `{name}`: {} not in {listed} ({})",
                    plural(self.not_allowed.count, "value"),
                    self.not_allowed.rows_with_values()
                )
            };
            push(CheckRule::Values, passed, message);
        }
        if let Some(limit) = self.rule.missing {
            let (passed, message) = missing_verdict(name, &self.missing, rows, limit);
            push(CheckRule::Missing, passed, message);
        }
    }
}

/// The `missing` rule: `limit` is a count when 1 or more, a fraction of the rows below 1.
fn missing_verdict(name: &str, missing: &Offenders, rows: u64, limit: f64) -> (bool, String) {
    // A negative limit can only mean "none".
    let limit = limit.max(0.0);
    let count = missing.count;
    let (passed, allowed) = if limit >= 1.0 {
        (count as f64 <= limit, format!("at most {limit} allowed"))
    } else {
        let fraction = if rows == 0 {
            0.0
        } else {
            count as f64 / rows as f64
        };
        let allowed = if limit == 0.0 {
            "none allowed".to_string()
        } else {
            format!("at most {}% allowed", percent(limit))
        };
        (fraction <= limit, allowed)
    };
    let mut message = format!("column `{name}`: {} missing", plural(count, "value"));
    if count > 0 {
        message.push_str(&format!(
            " ({}% of {})",
            percent(count as f64 / rows as f64),
            plural(rows, "row")
        ));
    }
    message.push_str(&format!(", {allowed}"));
    if !passed {
        message.push_str(&format!(" ({})", missing.rows()));
    }
    (passed, message)
}

fn is_missing(value: &str) -> bool {
    MISSING_MARKERS
        .iter()
        .any(|marker| value.trim().eq_ignore_ascii_case(marker))
}

fn has_type(kind: ColumnType, value: &str) -> bool {
    match kind {
        ColumnType::Int => {
            let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
            // Digits only, whatever the length: ids may not fit in 64 bits.
            !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit())
        }
        ColumnType::Float => value.parse::<f64>().is_ok(),
        ColumnType::Bool => ["true", "false", "1", "0"]
            .iter()
            .any(|word| value.eq_ignore_ascii_case(word)),
        ColumnType::String => true,
    }
}

fn list_allowed(values: &[String]) -> String {
    let mut listed: Vec<&str> = values
        .iter()
        .take(LISTED_ALLOWED_VALUES)
        .map(String::as_str)
        .collect();
    if values.len() > LISTED_ALLOWED_VALUES {
        listed.push("…");
    }
    format!("[{}]", listed.join(", "))
}

/// `0.04` -> `4`, `0.0125` -> `1.25`: at most two decimals, no trailing zeros.
fn percent(fraction: f64) -> String {
    let text = format!("{:.2}", fraction * 100.0);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `1 row`, `12 rows`.
fn plural(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// `1 value is`, `3 values are`.
fn plural_verb(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun} is")
    } else {
        format!("{count} {noun}s are")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A project root holding `file` with `contents`, and a check on it.
    struct Fixture {
        root: tempfile::TempDir,
        check: DataCheck,
    }

    impl Fixture {
        fn new(file: &str, contents: &str) -> Self {
            let root = tempfile::tempdir().unwrap();
            let path = root.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, contents).unwrap();
            let check = DataCheck {
                file: RelPath::resolve(&RelPath::root(), file).unwrap(),
                rows: RowBounds::default(),
                columns: Vec::new(),
            };
            Self { root, check }
        }

        fn rows(mut self, min: Option<u64>, max: Option<u64>) -> Self {
            self.check.rows = RowBounds { min, max };
            self
        }

        fn column(mut self, name: &str, rule: ColumnRule) -> Self {
            self.check.columns.push((name.to_string(), rule));
            self
        }

        fn run(&self) -> CheckReport {
            run_check(self.root.path(), &self.check).unwrap()
        }

        /// The one outcome of `rule`.
        fn outcome(&self, rule: CheckRule) -> RuleOutcome {
            let report = self.run();
            let mut matching = report.outcomes.into_iter().filter(|o| o.rule == rule);
            let outcome = matching.next().expect("no outcome for the rule");
            assert!(matching.next().is_none(), "several outcomes for {rule:?}");
            outcome
        }
    }

    /// `header` then one line per value.
    fn one_column(header: &str, values: &[&str]) -> String {
        let mut text = format!("{header}\n");
        for value in values {
            text.push_str(value);
            text.push('\n');
        }
        text
    }

    fn typed(kind: ColumnType) -> ColumnRule {
        ColumnRule {
            kind: Some(kind),
            ..ColumnRule::default()
        }
    }

    fn assert_outcome(outcome: &RuleOutcome, passed: bool, message: &str) {
        assert_eq!(outcome.message, message);
        assert_eq!(outcome.passed, passed, "{message}");
    }

    #[test]
    fn row_count_within_bounds_passes() {
        let fixture = Fixture::new("a.csv", &one_column("x", &["1"; 120])).rows(Some(100), None);
        assert_outcome(
            &fixture.outcome(CheckRule::Rows),
            true,
            "120 rows (expected at least 100)",
        );
        assert_eq!(fixture.run().rows, 120);
    }

    #[test]
    fn too_few_rows_fail() {
        let fixture = Fixture::new("a.csv", &one_column("x", &["1"; 12])).rows(Some(100), None);
        assert_outcome(
            &fixture.outcome(CheckRule::Rows),
            false,
            "12 rows, expected at least 100",
        );
    }

    #[test]
    fn too_many_rows_fail() {
        let fixture = Fixture::new("a.csv", &one_column("x", &["1"; 3])).rows(None, Some(2));
        assert_outcome(
            &fixture.outcome(CheckRule::Rows),
            false,
            "3 rows, expected at most 2",
        );
        let fixture = Fixture::new("a.csv", &one_column("x", &["1"])).rows(Some(2), Some(5));
        assert_outcome(
            &fixture.outcome(CheckRule::Rows),
            false,
            "1 row, expected between 2 and 5",
        );
    }

    #[test]
    fn no_row_bounds_means_no_row_outcome() {
        let report = Fixture::new("a.csv", "x\n1\n").run();
        assert!(report.outcomes.is_empty());
        assert!(report.passed());
    }

    #[test]
    fn missing_column_names_the_file_and_the_columns_there() {
        let fixture = Fixture::new("data/processed/train.csv", "a,b,c\n1,2,3\n")
            .column("species", ColumnRule::default());
        let outcome = fixture.outcome(CheckRule::Present);
        assert_outcome(
            &outcome,
            false,
            "column `species` is missing from `data/processed/train.csv` (columns: a, b, c)",
        );
        assert_eq!(outcome.column.as_deref(), Some("species"));
    }

    #[test]
    fn present_column_passes() {
        let fixture = Fixture::new("a.csv", "a,b\n1,2\n").column("b", ColumnRule::default());
        assert_outcome(
            &fixture.outcome(CheckRule::Present),
            true,
            "column `b` is present",
        );
    }

    #[test]
    fn empty_file_has_no_columns() {
        let fixture = Fixture::new("a.csv", "")
            .column("x", ColumnRule::default())
            .rows(Some(1), None);
        let report = fixture.run();
        assert_eq!(report.rows, 0);
        assert_eq!(
            report.outcomes[1].message,
            "column `x` is missing from `a.csv` (the file is empty)"
        );
        assert!(!report.passed());
    }

    #[test]
    fn int_type_passes_and_fails() {
        let fixture = Fixture::new(
            "a.csv",
            &one_column("n", &["1", "-2", "+3", "123456789012345678901234"]),
        )
        .column("n", typed(ColumnType::Int));
        assert_outcome(
            &fixture.outcome(CheckRule::Type),
            true,
            "column `n`: all values are int",
        );

        let fixture = Fixture::new("a.csv", &one_column("n", &["1", "1.5", "2", "x"]))
            .column("n", typed(ColumnType::Int));
        assert_outcome(
            &fixture.outcome(CheckRule::Type),
            false,
            "column `n`: 2 values are not int (row 3: `1.5`, row 5: `x`)",
        );
    }

    #[test]
    fn float_type_passes_and_fails() {
        let fixture = Fixture::new("a.csv", &one_column("f", &["1", "-2.5", "1e3", " 4.25 "]))
            .column("f", typed(ColumnType::Float));
        assert_outcome(
            &fixture.outcome(CheckRule::Type),
            true,
            "column `f`: all values are float",
        );

        let fixture = Fixture::new("a.csv", &one_column("f", &["1.0", "one"]))
            .column("f", typed(ColumnType::Float));
        assert_outcome(
            &fixture.outcome(CheckRule::Type),
            false,
            "column `f`: 1 value is not float (row 3: `one`)",
        );
    }

    #[test]
    fn bool_type_passes_and_fails() {
        let fixture = Fixture::new(
            "a.csv",
            &one_column("b", &["true", "False", "1", "0", "TRUE"]),
        )
        .column("b", typed(ColumnType::Bool));
        assert!(fixture.outcome(CheckRule::Type).passed);

        let fixture =
            Fixture::new("a.csv", &one_column("b", &["yes"])).column("b", typed(ColumnType::Bool));
        assert_outcome(
            &fixture.outcome(CheckRule::Type),
            false,
            "column `b`: 1 value is not bool (row 2: `yes`)",
        );
    }

    #[test]
    fn string_type_accepts_anything() {
        let fixture = Fixture::new("a.csv", &one_column("s", &["1", "x", "\"a, b\""]))
            .column("s", typed(ColumnType::String));
        assert!(fixture.outcome(CheckRule::Type).passed);
    }

    #[test]
    fn max_failure_lists_spreadsheet_rows() {
        // Data rows 3, 16 and 89 are spreadsheet rows 4, 17 and 90.
        let values: Vec<String> = (1..=100)
            .map(|n| {
                if [3, 16, 89].contains(&n) {
                    "12.5".into()
                } else {
                    "5".into()
                }
            })
            .collect();
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let fixture = Fixture::new("a.csv", &one_column("sepal_length", &values)).column(
            "sepal_length",
            ColumnRule {
                max: Some(10.0),
                ..ColumnRule::default()
            },
        );
        assert_outcome(
            &fixture.outcome(CheckRule::Max),
            false,
            "column `sepal_length`: 3 values above max 10 (rows 4, 17, 90)",
        );
    }

    #[test]
    fn min_and_max_pass_on_bounds() {
        let rule = ColumnRule {
            kind: Some(ColumnType::Float),
            min: Some(0.0),
            max: Some(10.0),
            ..ColumnRule::default()
        };
        let fixture =
            Fixture::new("a.csv", &one_column("x", &["0", "10", "4.5"])).column("x", rule);
        assert_outcome(
            &fixture.outcome(CheckRule::Min),
            true,
            "column `x`: no value below min 0",
        );
        assert_outcome(
            &fixture.outcome(CheckRule::Max),
            true,
            "column `x`: no value above max 10",
        );
    }

    #[test]
    fn below_min_fails() {
        let rule = ColumnRule {
            min: Some(0.5),
            ..ColumnRule::default()
        };
        let fixture = Fixture::new("a.csv", &one_column("x", &["0.4", "1"])).column("x", rule);
        assert_outcome(
            &fixture.outcome(CheckRule::Min),
            false,
            "column `x`: 1 value below min 0.5 (row 2)",
        );
    }

    #[test]
    fn many_offenders_are_cut_to_a_few() {
        let rule = ColumnRule {
            max: Some(0.0),
            ..ColumnRule::default()
        };
        let fixture = Fixture::new("a.csv", &one_column("x", &["1"; 12])).column("x", rule);
        assert_outcome(
            &fixture.outcome(CheckRule::Max),
            false,
            "column `x`: 12 values above max 0 (rows 2, 3, 4, 5, 6 and 7 more)",
        );
    }

    #[test]
    fn min_on_text_without_a_type_reports_the_text() {
        let rule = ColumnRule {
            min: Some(0.0),
            ..ColumnRule::default()
        };
        let fixture = Fixture::new("a.csv", &one_column("x", &["1", "abc"])).column("x", rule);
        assert_outcome(
            &fixture.outcome(CheckRule::Type),
            false,
            "column `x`: 1 value is not a number, which min and max need (row 3: `abc`)",
        );
        assert!(fixture.outcome(CheckRule::Min).passed);
    }

    #[test]
    fn min_on_text_with_a_numeric_type_is_reported_once() {
        let rule = ColumnRule {
            kind: Some(ColumnType::Float),
            min: Some(0.0),
            ..ColumnRule::default()
        };
        let fixture = Fixture::new("a.csv", &one_column("x", &["abc"])).column("x", rule);
        let report = fixture.run();
        assert_eq!(report.failures().count(), 1, "{report}");
        assert_eq!(report.failures().next().unwrap().rule, CheckRule::Type);
    }

    #[test]
    fn allowed_values_pass_and_fail() {
        let rule = ColumnRule {
            values: Some(vec![
                "setosa".into(),
                "versicolor".into(),
                "virginica".into(),
            ]),
            ..ColumnRule::default()
        };
        let fixture = Fixture::new("a.csv", &one_column("species", &["setosa", "virginica"]))
            .column("species", rule.clone());
        assert_outcome(
            &fixture.outcome(CheckRule::Values),
            true,
            "column `species`: all values in [setosa, versicolor, virginica]",
        );

        let fixture = Fixture::new(
            "a.csv",
            &one_column("species", &["setosa", "setsa", "Virginica"]),
        )
        .column("species", rule);
        assert_outcome(
            &fixture.outcome(CheckRule::Values),
            false,
            "column `species`: 2 values not in [setosa, versicolor, virginica] \
             (row 3: `setsa`, row 4: `Virginica`)",
        );
    }

    #[test]
    fn every_missing_marker_counts_and_no_other_rule_sees_it() {
        let rule = ColumnRule {
            kind: Some(ColumnType::Float),
            min: Some(0.0),
            values: Some(vec!["1".into()]),
            missing: Some(0.0),
            ..ColumnRule::default()
        };
        // Two columns: csv skips blank lines, so a lone empty value would not be a row.
        let values = [
            "1,a", ",a", "NA,a", "nan,a", "NULL,a", "None,a", "na,a", "NaN,a",
        ];
        let fixture = Fixture::new("a.csv", &one_column("x,y", &values)).column("x", rule);
        let report = fixture.run();
        assert_eq!(report.failures().count(), 1, "{report}");
        assert_outcome(
            &fixture.outcome(CheckRule::Missing),
            false,
            "column `x`: 7 values missing (87.5% of 8 rows), none allowed \
             (rows 3, 4, 5, 6, 7 and 2 more)",
        );
    }

    #[test]
    fn missing_count_limit_passes_and_fails() {
        let rule = |limit: f64| ColumnRule {
            missing: Some(limit),
            ..ColumnRule::default()
        };
        let csv = one_column("x,y", &["1,", "2,", "3,4"]).replace(",\n", ",NA\n");
        let fixture = Fixture::new("a.csv", &csv).column("y", rule(2.0));
        assert_outcome(
            &fixture.outcome(CheckRule::Missing),
            true,
            "column `y`: 2 values missing (66.67% of 3 rows), at most 2 allowed",
        );
        let fixture = Fixture::new("a.csv", &csv).column("y", rule(1.0));
        assert_outcome(
            &fixture.outcome(CheckRule::Missing),
            false,
            "column `y`: 2 values missing (66.67% of 3 rows), at most 1 allowed (rows 2, 3)",
        );
    }

    #[test]
    fn missing_fraction_limit_passes_and_fails() {
        let mut values = vec!["1"; 96];
        values.extend(["NA", "NA", "NA", "NA"]);
        let rule = |limit: f64| ColumnRule {
            missing: Some(limit),
            ..ColumnRule::default()
        };
        let fixture = Fixture::new("a.csv", &one_column("x", &values)).column("x", rule(0.05));
        assert_outcome(
            &fixture.outcome(CheckRule::Missing),
            true,
            "column `x`: 4 values missing (4% of 100 rows), at most 5% allowed",
        );
        let fixture = Fixture::new("a.csv", &one_column("x", &values)).column("x", rule(0.01));
        assert_outcome(
            &fixture.outcome(CheckRule::Missing),
            false,
            "column `x`: 4 values missing (4% of 100 rows), at most 1% allowed \
             (rows 98, 99, 100, 101)",
        );
    }

    #[test]
    fn no_missing_values_pass_a_zero_limit() {
        let rule = ColumnRule {
            missing: Some(0.0),
            ..ColumnRule::default()
        };
        let fixture = Fixture::new("a.csv", &one_column("x", &["1", "2"])).column("x", rule);
        assert_outcome(
            &fixture.outcome(CheckRule::Missing),
            true,
            "column `x`: 0 values missing, none allowed",
        );
    }

    #[test]
    fn quoted_newlines_count_as_one_row() {
        let csv = "id,note\n1,\"two\nlines\"\n2,ok\n3,bad\n";
        let rule = ColumnRule {
            values: Some(vec!["two\nlines".into(), "ok".into()]),
            ..ColumnRule::default()
        };
        let fixture = Fixture::new("a.csv", csv).column("note", rule);
        assert_outcome(
            &fixture.outcome(CheckRule::Values),
            false,
            "column `note`: 1 value not in [two\nlines, ok] (row 4: `bad`)",
        );
    }

    #[test]
    fn byte_order_mark_and_tabs_are_understood() {
        let fixture =
            Fixture::new("a.csv", "\u{feff}x,y\n1,2\n").column("x", typed(ColumnType::Int));
        assert!(fixture.run().passed(), "{}", fixture.run());
        let fixture =
            Fixture::new("a.tsv", "x\ty\n1\ta b\n").column("y", typed(ColumnType::String));
        assert!(fixture.run().passed(), "{}", fixture.run());
    }

    #[test]
    fn outcomes_follow_the_declared_order() {
        let fixture = Fixture::new("a.csv", "a,b\n1,2\n")
            .rows(Some(1), None)
            .column("b", typed(ColumnType::Int))
            .column("z", ColumnRule::default())
            .column("a", ColumnRule::default());
        let order: Vec<(Option<String>, CheckRule)> = fixture
            .run()
            .outcomes
            .into_iter()
            .map(|o| (o.column, o.rule))
            .collect();
        let column = |name: &str| Some(name.to_string());
        assert_eq!(
            order,
            [
                (None, CheckRule::Rows),
                (column("b"), CheckRule::Present),
                (column("b"), CheckRule::Type),
                (column("z"), CheckRule::Present),
                (column("a"), CheckRule::Present),
            ]
        );
    }

    #[test]
    fn report_summarises_failures() {
        let fixture = Fixture::new("a.csv", "a\n1\n")
            .rows(Some(2), None)
            .column("a", typed(ColumnType::Int));
        assert_eq!(
            fixture.run().to_string(),
            "data checks on `a.csv` failed (1 of 3 rules)\n  1 row, expected at least 2"
        );
        let fixture = Fixture::new("a.csv", "a\n1\n").column("a", typed(ColumnType::Int));
        assert_eq!(
            fixture.run().to_string(),
            "data checks on `a.csv` passed (2 rules, 1 row)"
        );
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let check = DataCheck {
            file: RelPath::resolve(&RelPath::root(), "data/processed/train.csv").unwrap(),
            rows: RowBounds::default(),
            columns: Vec::new(),
        };
        let error = run_check(root.path(), &check).unwrap_err();
        assert!(matches!(error, CheckError::NotFound { .. }));
        assert_eq!(
            error.to_string(),
            "`data/processed/train.csv` does not exist, so its data checks cannot run"
        );
        assert!(error.hint().unwrap().contains("did not write it"));
    }

    #[test]
    fn ragged_file_is_an_error_with_the_line() {
        let fixture = Fixture::new("a.csv", "a,b\n1,2\n3\n");
        let error = run_check(fixture.root.path(), &fixture.check).unwrap_err();
        assert_eq!(
            error.to_string(),
            "`a.csv` is not a valid CSV file: line 3: found 1 field, expected 2 like the lines before"
        );
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a.csv"), b"a\n\xff\xfe\n").unwrap();
        let check = DataCheck {
            file: RelPath::resolve(&RelPath::root(), "a.csv").unwrap(),
            rows: RowBounds::default(),
            columns: Vec::new(),
        };
        let error = run_check(root.path(), &check).unwrap_err();
        assert_eq!(
            error.to_string(),
            "`a.csv` is not a valid CSV file: line 2: not valid UTF-8"
        );
    }

    #[test]
    fn percent_is_short() {
        assert_eq!(percent(0.04), "4");
        assert_eq!(percent(0.0125), "1.25");
        assert_eq!(percent(2.0 / 3.0), "66.67");
        assert_eq!(percent(1.0), "100");
    }
}
