//! kiln-profile: what a table of training data looks like, column by column, in a form two
//! profiles can be compared by (drift detection builds on it).
//!
//! [`profile_csv`] reads a CSV file once, streaming, and types each column as pandas'
//! `read_csv` would (`int64`, `float64`, `bool`, else `string`), with pandas' default missing
//! markers. Numeric columns get count, missing, min, max, mean, standard deviation (ddof 1),
//! the quantiles of [`QUANTILES`] (numpy's linear interpolation) and a histogram of
//! [`HISTOGRAM_BINS`] equal-width bins (numpy's `histogram` over the finite values); other
//! columns get the distinct count and the [`TOP_CATEGORIES`] most frequent values.
//!
//! Exact quantiles need a column's values: numeric values are kept in memory (8 bytes each)
//! until the column is summarised. A column that turns out to be text after rows of numbers is
//! read a second time, for those rows only. The JSON form of [`Profile`] is stable; a change to
//! it bumps [`PROFILE_VERSION`].

mod error;
mod profile;
mod read;

pub use error::Error;
pub use profile::{
    CategoricalStats, Category, ColumnProfile, ColumnStats, DataType, HISTOGRAM_BINS, Histogram,
    NumericStats, PROFILE_VERSION, Profile, ProfileSource, QUANTILES, Quantile, TOP_CATEGORIES,
};
pub use read::{is_missing, profile_csv};
