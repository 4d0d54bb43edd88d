//! Reading a CSV file into a [`Profile`]: one streaming pass types every column as it goes
//! (number, boolean or text) and keeps what its summary needs; a column found to be text after
//! rows of numbers has those rows read again, for that column only.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;

use crate::Error;
use crate::profile::{
    ColumnProfile, ColumnStats, DataType, PROFILE_VERSION, Profile, categorical_stats,
    numeric_stats,
};

/// pandas' default missing markers (`read_csv`'s `na_values`), the empty field included.
const MISSING: [&[u8]; 19] = [
    b"",
    b"#N/A",
    b"#N/A N/A",
    b"#NA",
    b"-1.#IND",
    b"-1.#QNAN",
    b"-NaN",
    b"-nan",
    b"1.#IND",
    b"1.#QNAN",
    b"<NA>",
    b"N/A",
    b"NA",
    b"NULL",
    b"NaN",
    b"None",
    b"n/a",
    b"nan",
    b"null",
];

/// pandas' spellings of booleans.
const TRUE: [&[u8]; 3] = [b"True", b"TRUE", b"true"];
const FALSE: [&[u8]; 3] = [b"False", b"FALSE", b"false"];

/// Whether pandas reads `field` as a missing value.
pub fn is_missing(field: &[u8]) -> bool {
    field.is_empty() || (field.len() <= 8 && MISSING.contains(&field))
}

/// What a column has been so far.
#[derive(Debug)]
enum Kind {
    /// Only missing values yet.
    Unknown,
    /// Every value a number; `integers` while all were integers.
    Numeric { values: Vec<f64>, integers: bool },
    /// Every value a boolean.
    Bool { trues: u64, falses: u64 },
    /// Text: each distinct value with its count. `reread_before` is the row where a column of
    /// numbers or booleans met its first text: the values of earlier rows must be read again as text.
    Text {
        counts: HashMap<Box<[u8]>, u64>,
        reread_before: Option<u64>,
    },
}

#[derive(Debug)]
struct Column {
    name: String,
    missing: u64,
    kind: Kind,
}

impl Column {
    fn add(&mut self, field: &[u8], row: u64) {
        if is_missing(field) {
            self.missing += 1;
            return;
        }
        match &mut self.kind {
            Kind::Numeric { values, integers } => {
                if let Some((value, integer)) = number(field) {
                    values.push(value);
                    *integers &= integer;
                } else {
                    let reread_before = (!values.is_empty()).then_some(row);
                    self.kind = text_with(field, reread_before);
                }
            }
            Kind::Bool { trues, falses } => match boolean(field) {
                Some(true) => *trues += 1,
                Some(false) => *falses += 1,
                None => {
                    // The booleans' spellings count as text now: read them again.
                    let reread_before = (*trues + *falses > 0).then_some(row);
                    self.kind = text_with(field, reread_before);
                }
            },
            Kind::Text { counts, .. } => {
                if let Some(count) = counts.get_mut(field) {
                    *count += 1;
                } else {
                    counts.insert(Box::from(field), 1);
                }
            }
            Kind::Unknown => {
                self.kind = if let Some((value, integer)) = number(field) {
                    Kind::Numeric {
                        values: vec![value],
                        integers: integer,
                    }
                } else {
                    match boolean(field) {
                        Some(value) => Kind::Bool {
                            trues: u64::from(value),
                            falses: u64::from(!value),
                        },
                        None => text_with(field, None),
                    }
                }
            }
        }
    }

    fn reread_before(&self) -> Option<u64> {
        match self.kind {
            Kind::Text { reread_before, .. } => reread_before,
            _ => None,
        }
    }

    fn finish(self, rows: u64) -> ColumnProfile {
        let missing = self.missing;
        let (dtype, count, stats) = match self.kind {
            // An empty table reads as text in pandas; a column of missing values as floats.
            Kind::Unknown if rows == 0 => (
                DataType::String,
                0,
                ColumnStats::Categorical(categorical_stats(HashMap::new())),
            ),
            Kind::Unknown => (
                DataType::Float64,
                0,
                ColumnStats::Numeric(numeric_stats(&mut [])),
            ),
            Kind::Numeric {
                mut values,
                integers,
            } => {
                let dtype = if integers && missing == 0 {
                    DataType::Int64
                } else {
                    DataType::Float64
                };
                let count = values.len() as u64;
                (
                    dtype,
                    count,
                    ColumnStats::Numeric(numeric_stats(&mut values)),
                )
            }
            Kind::Bool { trues, falses } => {
                let mut counts = HashMap::new();
                for (value, count) in [("True", trues), ("False", falses)] {
                    if count > 0 {
                        counts.insert(value.to_string(), count);
                    }
                }
                // pandas keeps booleans with missing values as objects.
                let dtype = if missing == 0 {
                    DataType::Bool
                } else {
                    DataType::String
                };
                (
                    dtype,
                    trues + falses,
                    ColumnStats::Categorical(categorical_stats(counts)),
                )
            }
            Kind::Text { counts, .. } => {
                let count = counts.values().sum();
                let counts = counts
                    .into_iter()
                    .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
                    .collect();
                (
                    DataType::String,
                    count,
                    ColumnStats::Categorical(categorical_stats(counts)),
                )
            }
        };
        ColumnProfile {
            name: self.name,
            dtype,
            count,
            missing,
            stats,
        }
    }
}

fn text_with(field: &[u8], reread_before: Option<u64>) -> Kind {
    let mut counts = HashMap::new();
    counts.insert(Box::from(field), 1);
    Kind::Text {
        counts,
        reread_before,
    }
}

/// A number as pandas reads one, and whether it is an integer.
fn number(field: &[u8]) -> Option<(f64, bool)> {
    let text = std::str::from_utf8(field).ok()?.trim_ascii();
    let first = *text.as_bytes().first()?;
    // Rust reads `inf`, `infinity` and `nan` in any case; only signs, digits and `.` start a
    // number here, plus the infinities pandas reads.
    if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
        return match text {
            "inf" | "Inf" | "INF" | "Infinity" => Some((f64::INFINITY, false)),
            _ => None,
        };
    }
    if let Ok(integer) = text.parse::<i64>() {
        return Some((integer as f64, true));
    }
    let value: f64 = text.parse().ok()?;
    if value.is_nan() {
        return None;
    }
    Some((value, false))
}

fn boolean(field: &[u8]) -> Option<bool> {
    if TRUE.contains(&field) {
        Some(true)
    } else if FALSE.contains(&field) {
        Some(false)
    } else {
        None
    }
}

fn reader(path: &Path) -> Result<csv::Reader<std::fs::File>, Error> {
    let file = std::fs::File::open(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_reader(file))
}

fn csv_error(path: &Path, source: csv::Error) -> Error {
    match source.kind() {
        csv::ErrorKind::Io(_) => match source.into_kind() {
            csv::ErrorKind::Io(source) => Error::Read {
                path: path.to_path_buf(),
                source,
            },
            _ => unreachable!("matched as Io above"),
        },
        _ => Error::Csv {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Profiles the CSV file at `path` (a header row, then data). A row with fewer fields than
/// the header has the rest missing, as in pandas; a row with more is an error.
pub fn profile_csv(path: &Path) -> Result<Profile, Error> {
    let mut reader = reader(path)?;
    let header = reader
        .byte_headers()
        .map_err(|e| csv_error(path, e))?
        .clone();
    if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
        return Err(Error::NoHeader {
            path: path.to_path_buf(),
        });
    }
    let mut columns: Vec<Column> = header
        .iter()
        .map(|name| Column {
            name: String::from_utf8_lossy(name).into_owned(),
            missing: 0,
            kind: Kind::Unknown,
        })
        .collect();
    let mut record = csv::ByteRecord::new();
    let mut rows: u64 = 0;
    while reader
        .read_byte_record(&mut record)
        .map_err(|e| csv_error(path, e))?
    {
        if record.len() > columns.len() {
            return Err(Error::TooManyFields {
                path: path.to_path_buf(),
                row: rows + 2,
                found: record.len(),
                expected: columns.len(),
            });
        }
        for (column, field) in columns.iter_mut().zip(record.iter()) {
            column.add(field, rows);
        }
        for column in &mut columns[record.len()..] {
            column.missing += 1;
        }
        rows += 1;
    }
    reread_as_text(path, &mut columns)?;
    let columns = columns
        .into_par_iter()
        .map(|column| column.finish(rows))
        .collect();
    Ok(Profile {
        version: PROFILE_VERSION,
        source: None,
        rows,
        columns,
    })
}

/// Counts, as text, the values that columns turned text held before they turned.
fn reread_as_text(path: &Path, columns: &mut [Column]) -> Result<(), Error> {
    let pending: Vec<(usize, u64)> = columns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.reread_before().map(|row| (i, row)))
        .collect();
    let Some(last) = pending.iter().map(|&(_, row)| row).max() else {
        return Ok(());
    };
    let mut reader = reader(path)?;
    let mut record = csv::ByteRecord::new();
    let mut row: u64 = 0;
    while row < last
        && reader
            .read_byte_record(&mut record)
            .map_err(|e| csv_error(path, e))?
    {
        for &(index, before) in &pending {
            let Some(field) = record.get(index) else {
                continue;
            };
            if row < before
                && !is_missing(field)
                && let Kind::Text { counts, .. } = &mut columns[index].kind
            {
                *counts.entry(Box::from(field)).or_default() += 1;
            }
        }
        row += 1;
    }
    Ok(())
}
