//! Durations as kiln.yaml and the command line write them: `500ms`, `30s`, `5m`, `1h`.

use std::time::Duration;

/// `1s`, `500ms`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit: write `{text}s`"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a number"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        "h" => Duration::from_secs(number * 3600),
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}`: use ms, s, m or h"
            ));
        }
    };
    if duration.is_zero() {
        return Err("the duration must be more than 0".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_and_a_positive_number() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("30").unwrap_err().contains("write `30s`"));
        assert!(parse_duration("0s").is_err());
        assert!(
            parse_duration("3d")
                .unwrap_err()
                .contains("unknown unit `d`")
        );
        assert!(parse_duration("s").is_err());
    }
}
