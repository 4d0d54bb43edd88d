//! The profile of a table and the summaries of its columns: the typed form of the JSON a model
//! version keeps. Every statistic is computed here from a column's values, so that what a
//! profile claims can be checked against numpy and pandas.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Version of the JSON form of [`Profile`]; bumped when a field changes meaning or goes away.
pub const PROFILE_VERSION: u32 = 1;

/// The quantile levels of every numeric column.
pub const QUANTILES: [f64; 7] = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99];

/// Equal-width bins of a numeric column's histogram.
pub const HISTOGRAM_BINS: usize = 20;

/// How many of a categorical column's most frequent values a profile keeps.
pub const TOP_CATEGORIES: usize = 20;

/// What a table looked like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// [`PROFILE_VERSION`] when it was made.
    pub version: u32,
    /// The file profiled, when the caller names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ProfileSource>,
    /// Data rows (the header not counted).
    pub rows: u64,
    /// In the file's order.
    pub columns: Vec<ColumnProfile>,
}

impl Profile {
    pub fn column(&self, name: &str) -> Option<&ColumnProfile> {
        self.columns.iter().find(|column| column.name == name)
    }
}

/// Which file a profile describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileSource {
    /// As its project names it (relative to the project root).
    pub path: String,
    /// BLAKE3 digest of its content, hex.
    pub digest: Option<String>,
    /// Named by the project (`training_data:`), rather than found among the model's data.
    pub declared: bool,
}

/// A column's type, as pandas' `read_csv` infers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// Every value an integer, none missing.
    Int64,
    /// Every value a number (integers with some missing included), or every value missing.
    Float64,
    /// Every value `True`/`False` (any of pandas' spellings), none missing.
    Bool,
    /// Anything else.
    String,
}

impl DataType {
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Int64 => "int64",
            DataType::Float64 => "float64",
            DataType::Bool => "bool",
            DataType::String => "string",
        }
    }
}

/// One column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnProfile {
    pub name: String,
    pub dtype: DataType,
    /// Values present.
    pub count: u64,
    /// Values missing (empty, `NA`, `NaN`, `null`, ... as pandas reads them).
    pub missing: u64,
    pub stats: ColumnStats,
}

impl ColumnProfile {
    pub fn numeric(&self) -> Option<&NumericStats> {
        match &self.stats {
            ColumnStats::Numeric(stats) => Some(stats),
            ColumnStats::Categorical(_) => None,
        }
    }

    pub fn categorical(&self) -> Option<&CategoricalStats> {
        match &self.stats {
            ColumnStats::Categorical(stats) => Some(stats),
            ColumnStats::Numeric(_) => None,
        }
    }

    /// Missing values as a fraction of the rows (0 for an empty table).
    pub fn missing_fraction(&self) -> f64 {
        let rows = self.count + self.missing;
        if rows == 0 {
            0.0
        } else {
            self.missing as f64 / rows as f64
        }
    }
}

/// A column's summary, by kind: `int64` and `float64` columns are numeric, `bool` and `string`
/// ones categorical.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ColumnStats {
    Numeric(NumericStats),
    Categorical(CategoricalStats),
}

/// A numeric column. Statistics are `None` when no value is present (`std` also with one
/// value); infinities take part in min, max, mean and std (and are `null` in JSON), not in the
/// histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericStats {
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    /// Sample standard deviation (ddof 1), as pandas' `std`.
    pub std: Option<f64>,
    /// At the levels of [`QUANTILES`], numpy's linear interpolation; empty with no value.
    pub quantiles: Vec<Quantile>,
    /// Of the finite values; `None` when there is none.
    pub histogram: Option<Histogram>,
}

impl NumericStats {
    /// The quantile at level `q`, if the profile holds it.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.quantiles.iter().find(|x| x.q == q).map(|x| x.value)
    }
}

/// One quantile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quantile {
    pub q: f64,
    pub value: f64,
}

/// Equal-width bins, as numpy's `histogram`: `edges` has one more entry than `counts`; every
/// bin is half-open but the last, which holds its upper edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
}

/// A categorical column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalStats {
    /// Distinct values present.
    pub distinct: u64,
    /// The most frequent values (at most [`TOP_CATEGORIES`]), most frequent first, ties in
    /// value order.
    pub top: Vec<Category>,
}

/// A value and how often it occurs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    pub value: String,
    pub count: u64,
}

/// The numeric summary of `values` (sorted in place).
pub(crate) fn numeric_stats(values: &mut [f64]) -> NumericStats {
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return NumericStats {
            min: None,
            max: None,
            mean: None,
            std: None,
            quantiles: Vec::new(),
            histogram: None,
        };
    }
    let mean = compensated_sum(values.iter().copied()) / n as f64;
    let std = (n > 1).then(|| {
        let squares = compensated_sum(values.iter().map(|v| (v - mean) * (v - mean)));
        (squares / (n - 1) as f64).sqrt()
    });
    let quantiles = QUANTILES
        .iter()
        .map(|&q| Quantile {
            q,
            value: quantile_of_sorted(values, q),
        })
        .collect();
    let finite: Vec<f64> = if values.iter().all(|v| v.is_finite()) {
        Vec::new()
    } else {
        values.iter().copied().filter(|v| v.is_finite()).collect()
    };
    let finite = if finite.is_empty() && values[0].is_finite() {
        &*values
    } else {
        &finite[..]
    };
    NumericStats {
        min: Some(values[0]),
        max: Some(values[n - 1]),
        mean: Some(mean),
        std,
        quantiles,
        histogram: histogram_of_sorted(finite, HISTOGRAM_BINS),
    }
}

/// Neumaier's compensated sum: close to numpy's pairwise sum on long columns.
fn compensated_sum(values: impl Iterator<Item = f64>) -> f64 {
    let mut sum = 0.0_f64;
    let mut compensation = 0.0_f64;
    for value in values {
        let total = sum + value;
        if sum.abs() >= value.abs() {
            compensation += (sum - total) + value;
        } else {
            compensation += (value - total) + sum;
        }
        sum = total;
    }
    sum + compensation
}

/// numpy's default (`linear`) quantile of sorted, non-empty values.
fn quantile_of_sorted(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    let t = position - below as f64;
    let (a, b) = (sorted[below], sorted[above]);
    if a == b {
        return a;
    }
    // numpy's `_lerp`: from the nearer end, which keeps the result within [a, b].
    if t >= 0.5 {
        b - (b - a) * (1.0 - t)
    } else {
        a + (b - a) * t
    }
}

/// numpy's `histogram(values, bins)` of sorted finite values.
fn histogram_of_sorted(sorted: &[f64], bins: usize) -> Option<Histogram> {
    let (&first, &last) = (sorted.first()?, sorted.last()?);
    let (low, high) = if first == last {
        (first - 0.5, last + 0.5)
    } else {
        (first, last)
    };
    let step = (high - low) / bins as f64;
    let mut edges: Vec<f64> = (0..bins).map(|i| low + i as f64 * step).collect();
    edges.push(high);
    let scale = bins as f64 / (high - low);
    let mut counts = vec![0_u64; bins];
    for &value in sorted {
        let mut bin = (((value - low) * scale) as usize).min(bins - 1);
        // As numpy: the float estimate may land one bin off; the edges decide.
        if value < edges[bin] {
            bin -= 1;
        } else if bin != bins - 1 && value >= edges[bin + 1] {
            bin += 1;
        }
        counts[bin] += 1;
    }
    Some(Histogram { edges, counts })
}

/// The categorical summary of value counts.
pub(crate) fn categorical_stats(counts: HashMap<String, u64>) -> CategoricalStats {
    let distinct = counts.len() as u64;
    let mut all: Vec<(String, u64)> = counts.into_iter().collect();
    all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(TOP_CATEGORIES);
    CategoricalStats {
        distinct,
        top: all
            .into_iter()
            .map(|(value, count)| Category { value, count })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_linearly() {
        let sorted = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_of_sorted(&sorted, 0.5), 2.5);
        assert_eq!(quantile_of_sorted(&sorted, 0.0), 1.0);
        assert_eq!(quantile_of_sorted(&sorted, 1.0), 4.0);
        assert!((quantile_of_sorted(&sorted, 0.25) - 1.75).abs() < 1e-12);
    }

    #[test]
    fn a_constant_column_gets_a_unit_wide_histogram() {
        let histogram = histogram_of_sorted(&[3.0, 3.0], 4).unwrap();
        assert_eq!(histogram.edges, vec![2.5, 2.75, 3.0, 3.25, 3.5]);
        assert_eq!(histogram.counts, vec![0, 0, 2, 0]);
    }

    #[test]
    fn the_last_bin_holds_the_maximum() {
        let histogram = histogram_of_sorted(&[0.0, 1.0, 2.0], 2).unwrap();
        assert_eq!(histogram.counts, vec![1, 2]);
    }
}
