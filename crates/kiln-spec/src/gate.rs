//! The gate expression language: `accuracy >= 0.9`, `f1 > 0.8 and loss < 0.3`,
//! `accuracy >= production.accuracy - 0.01`.
//!
//! Grammar, loosest binding first:
//! ```text
//! or      := and ("or" and)*
//! and     := not ("and" not)*
//! not     := "not" not | compare
//! compare := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
//! sum     := product (("+" | "-") product)*
//! product := unary (("*" | "/") unary)*
//! unary   := "-" unary | NUMBER | "true" | "false" | NAME | "(" or ")"
//! NAME    := identifier ("." identifier)*        e.g. `accuracy`, `test.f1`, `production.accuracy`
//! ```
//! Types are checked when parsing: a gate is a condition (true or false), arithmetic takes
//! numbers, `and`/`or`/`not` take conditions.

use std::fmt;

/// Names whose first segment is one of these refer to another model version's metrics
/// (through the registry's aliases), not to this run's.
pub const REFERENCE_PREFIXES: [&str; 3] = ["production", "staging", "previous"];

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Number(f64),
    Bool(bool),
    Name(String),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Binary(Box<Expr>, Op, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Add => "+",
            Op::Sub => "-",
            Op::Mul => "*",
            Op::Div => "/",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::And => "and",
            Op::Or => "or",
        }
    }
}

/// A syntax or type error, with the byte range of the offending text in the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateSyntaxError {
    pub message: String,
    pub range: std::ops::Range<usize>,
    pub hint: Option<String>,
}

/// What a name resolves to when a gate is evaluated.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Value(f64),
    /// A reference that cannot be had now (no model is in production yet): the gate is skipped.
    Unavailable(String),
    /// Not a metric of this run.
    Unknown,
}

/// The outcome of one gate.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Not evaluated, with the reason; does not fail the run.
    Skipped(String),
    /// A name that is no metric of the run; fails the run.
    UnknownMetric(String),
}

impl Verdict {
    pub fn blocks(&self) -> bool {
        matches!(self, Verdict::Fail | Verdict::UnknownMetric(_))
    }

    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Skipped(_) => "skipped",
            Verdict::UnknownMetric(_) => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Number,
    Condition,
}

impl Expr {
    /// Every name the expression reads, in order of appearance, without repeats.
    pub fn names(&self) -> Vec<&str> {
        let mut names = Vec::new();
        self.collect_names(&mut names);
        names
    }

    fn collect_names<'a>(&'a self, names: &mut Vec<&'a str>) {
        match self {
            Expr::Name(name) if !names.contains(&name.as_str()) => names.push(name),
            Expr::Neg(inner) | Expr::Not(inner) => inner.collect_names(names),
            Expr::Binary(left, _, right) => {
                left.collect_names(names);
                right.collect_names(names);
            }
            _ => {}
        }
    }

    /// Names that refer to this run's metrics (not to another version through an alias).
    pub fn metric_names(&self) -> Vec<&str> {
        self.names()
            .into_iter()
            .filter(|name| !is_reference(name))
            .collect()
    }

    /// Evaluates the gate. Names are looked up with `lookup`.
    pub fn verdict(&self, lookup: &dyn Fn(&str) -> Lookup) -> Verdict {
        match self.eval(lookup) {
            Ok(value) if value != 0.0 => Verdict::Pass,
            Ok(_) => Verdict::Fail,
            Err(Interrupt::Unknown(name)) => Verdict::UnknownMetric(name),
            Err(Interrupt::Unavailable(reason)) => Verdict::Skipped(reason),
        }
    }

    // Conditions evaluate to 1.0 (true) or 0.0 (false): the parser has already checked types.
    fn eval(&self, lookup: &dyn Fn(&str) -> Lookup) -> Result<f64, Interrupt> {
        let truth = |b: bool| if b { 1.0 } else { 0.0 };
        Ok(match self {
            Expr::Number(n) => *n,
            Expr::Bool(b) => truth(*b),
            Expr::Name(name) => match lookup(name) {
                Lookup::Value(v) => v,
                Lookup::Unavailable(reason) => return Err(Interrupt::Unavailable(reason)),
                Lookup::Unknown => return Err(Interrupt::Unknown(name.clone())),
            },
            Expr::Neg(inner) => -inner.eval(lookup)?,
            Expr::Not(inner) => truth(inner.eval(lookup)? == 0.0),
            Expr::Binary(left, op, right) => {
                let l = left.eval(lookup)?;
                // `and`/`or` short-circuit, so `x > 0 or production.x < 1` passes without production.
                match op {
                    Op::And if l == 0.0 => return Ok(0.0),
                    Op::Or if l != 0.0 => return Ok(1.0),
                    _ => {}
                }
                let r = right.eval(lookup)?;
                match op {
                    Op::Add => l + r,
                    Op::Sub => l - r,
                    Op::Mul => l * r,
                    Op::Div => l / r,
                    Op::Lt => truth(l < r),
                    Op::Le => truth(l <= r),
                    Op::Gt => truth(l > r),
                    Op::Ge => truth(l >= r),
                    Op::Eq => truth(l == r),
                    Op::Ne => truth(l != r),
                    Op::And | Op::Or => truth(r != 0.0),
                }
            }
        })
    }
}

enum Interrupt {
    Unknown(String),
    Unavailable(String),
}

/// True for names such as `production.accuracy`.
pub fn is_reference(name: &str) -> bool {
    name.split_once('.')
        .is_some_and(|(first, _)| REFERENCE_PREFIXES.contains(&first))
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Number(n) => write!(f, "{n}"),
            Expr::Bool(b) => write!(f, "{b}"),
            Expr::Name(name) => f.write_str(name),
            Expr::Neg(inner) => write!(f, "-{inner}"),
            Expr::Not(inner) => write!(f, "not {inner}"),
            Expr::Binary(l, op, r) => write!(f, "({l} {} {r})", op.symbol()),
        }
    }
}

/// Parses a gate: it must be a condition.
pub fn parse(text: &str) -> Result<Expr, GateSyntaxError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser {
        tokens,
        position: 0,
        text_len: text.len(),
    };
    let (expr, ty, range) = parser.or()?;
    if let Some(token) = parser.peek() {
        return Err(GateSyntaxError {
            message: format!(
                "unexpected `{}` after a complete expression",
                token.text(text)
            ),
            range: token.range.clone(),
            hint: Some("join conditions with `and` or `or`".into()),
        });
    }
    if ty != Type::Condition {
        return Err(GateSyntaxError {
            message: "a gate must be a condition, but this is a number".into(),
            range,
            hint: Some("compare it with a threshold, e.g. `accuracy >= 0.9`".into()),
        });
    }
    Ok(expr)
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Number(f64),
    Name(String),
    Op(&'static str),
    Open,
    Close,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    range: std::ops::Range<usize>,
}

impl Token {
    fn text<'a>(&self, source: &'a str) -> &'a str {
        &source[self.range.clone()]
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, GateSyntaxError> {
    const OPERATORS: [&str; 12] = [
        "<=", ">=", "==", "!=", "<", ">", "+", "-", "*", "/", "&&", "||",
    ];
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let kind = if c.is_ascii_digit()
            || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric()
                    || bytes[i] == b'.'
                    || ((bytes[i] == b'-' || bytes[i] == b'+')
                        && matches!(bytes[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
            let literal = &text[start..i];
            let value = literal.parse::<f64>().map_err(|_| GateSyntaxError {
                message: format!("`{literal}` is not a number"),
                range: start..i,
                hint: None,
            })?;
            Kind::Number(value)
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b'.'))
            {
                i += 1;
            }
            let name = &text[start..i];
            if name.ends_with('.') || name.contains("..") {
                return Err(GateSyntaxError {
                    message: format!("`{name}` is not a valid metric name"),
                    range: start..i,
                    hint: Some(
                        "metric names are dotted identifiers such as `test.accuracy`".into(),
                    ),
                });
            }
            Kind::Name(name.to_string())
        } else if c == b'(' {
            i += 1;
            Kind::Open
        } else if c == b')' {
            i += 1;
            Kind::Close
        } else if let Some(op) = OPERATORS.iter().find(|op| text[i..].starts_with(**op)) {
            i += op.len();
            Kind::Op(match *op {
                "&&" => "and",
                "||" => "or",
                other => other,
            })
        } else {
            let ch = text[i..].chars().next().unwrap_or('?');
            let hint = if ch == '=' {
                Some("use `==` to compare or `>=` for a threshold".to_string())
            } else {
                None
            };
            return Err(GateSyntaxError {
                message: format!("unexpected character `{ch}`"),
                range: start..start + ch.len_utf8(),
                hint,
            });
        };
        tokens.push(Token {
            kind,
            range: start..i,
        });
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    position: usize,
    text_len: usize,
}

type Parsed = (Expr, Type, std::ops::Range<usize>);

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn is_word(&self, word: &str) -> bool {
        match self.peek().map(|t| &t.kind) {
            Some(Kind::Name(name)) => name == word,
            Some(Kind::Op(op)) => *op == word,
            _ => false,
        }
    }

    fn end_error(&self, what: &str) -> GateSyntaxError {
        GateSyntaxError {
            message: format!("the expression ends where {what} was expected"),
            range: self.text_len..self.text_len + 1,
            hint: None,
        }
    }

    fn expect(ty: Type, parsed: &Parsed, context: &str) -> Result<(), GateSyntaxError> {
        if parsed.1 == ty {
            return Ok(());
        }
        let (wanted, found) = match ty {
            Type::Number => ("a number", "a condition"),
            Type::Condition => ("a condition", "a number"),
        };
        Err(GateSyntaxError {
            message: format!("{context} needs {wanted}, but this is {found}"),
            range: parsed.2.clone(),
            hint: None,
        })
    }

    fn logical(
        &mut self,
        word: &'static str,
        op: Op,
        next: fn(&mut Self) -> Result<Parsed, GateSyntaxError>,
    ) -> Result<Parsed, GateSyntaxError> {
        let mut left = next(self)?;
        while self.is_word(word) {
            self.position += 1;
            let right = next(self)?;
            Self::expect(Type::Condition, &left, &format!("`{word}`"))?;
            Self::expect(Type::Condition, &right, &format!("`{word}`"))?;
            let range = left.2.start..right.2.end;
            left = (
                Expr::Binary(Box::new(left.0), op, Box::new(right.0)),
                Type::Condition,
                range,
            );
        }
        Ok(left)
    }

    fn or(&mut self) -> Result<Parsed, GateSyntaxError> {
        self.logical("or", Op::Or, Self::and)
    }

    fn and(&mut self) -> Result<Parsed, GateSyntaxError> {
        self.logical("and", Op::And, Self::not)
    }

    fn not(&mut self) -> Result<Parsed, GateSyntaxError> {
        if self.is_word("not") {
            let start = self.peek().map_or(0, |t| t.range.start);
            self.position += 1;
            let inner = self.not()?;
            Self::expect(Type::Condition, &inner, "`not`")?;
            let range = start..inner.2.end;
            return Ok((Expr::Not(Box::new(inner.0)), Type::Condition, range));
        }
        self.compare()
    }

    fn compare(&mut self) -> Result<Parsed, GateSyntaxError> {
        let left = self.sum()?;
        let op = match self.peek().map(|t| &t.kind) {
            Some(Kind::Op("<")) => Op::Lt,
            Some(Kind::Op("<=")) => Op::Le,
            Some(Kind::Op(">")) => Op::Gt,
            Some(Kind::Op(">=")) => Op::Ge,
            Some(Kind::Op("==")) => Op::Eq,
            Some(Kind::Op("!=")) => Op::Ne,
            _ => return Ok(left),
        };
        self.position += 1;
        let right = self.sum()?;
        let context = format!("`{}`", op.symbol());
        Self::expect(Type::Number, &left, &context)?;
        Self::expect(Type::Number, &right, &context)?;
        if let Some(Kind::Op(next @ ("<" | "<=" | ">" | ">=" | "==" | "!="))) =
            self.peek().map(|t| &t.kind)
        {
            return Err(GateSyntaxError {
                message: format!(
                    "comparisons cannot be chained (`{next}` after `{}`)",
                    op.symbol()
                ),
                range: self.peek().map_or(0..0, |t| t.range.clone()),
                hint: Some("write `a < b and b < c`".into()),
            });
        }
        let range = left.2.start..right.2.end;
        Ok((
            Expr::Binary(Box::new(left.0), op, Box::new(right.0)),
            Type::Condition,
            range,
        ))
    }

    fn arithmetic(
        &mut self,
        ops: [(&'static str, Op); 2],
        next: fn(&mut Self) -> Result<Parsed, GateSyntaxError>,
    ) -> Result<Parsed, GateSyntaxError> {
        let mut left = next(self)?;
        while let Some(&(symbol, op)) = ops
            .iter()
            .find(|(symbol, _)| self.peek().is_some_and(|t| t.kind == Kind::Op(symbol)))
        {
            self.position += 1;
            let right = next(self)?;
            let context = format!("`{symbol}`");
            Self::expect(Type::Number, &left, &context)?;
            Self::expect(Type::Number, &right, &context)?;
            let range = left.2.start..right.2.end;
            left = (
                Expr::Binary(Box::new(left.0), op, Box::new(right.0)),
                Type::Number,
                range,
            );
        }
        Ok(left)
    }

    fn sum(&mut self) -> Result<Parsed, GateSyntaxError> {
        self.arithmetic([("+", Op::Add), ("-", Op::Sub)], Self::product)
    }

    fn product(&mut self) -> Result<Parsed, GateSyntaxError> {
        self.arithmetic([("*", Op::Mul), ("/", Op::Div)], Self::unary)
    }

    fn unary(&mut self) -> Result<Parsed, GateSyntaxError> {
        let Some(token) = self.peek().cloned() else {
            return Err(self.end_error("a value"));
        };
        self.position += 1;
        match token.kind {
            Kind::Op("-") => {
                let inner = self.unary()?;
                Self::expect(Type::Number, &inner, "`-`")?;
                let range = token.range.start..inner.2.end;
                Ok((Expr::Neg(Box::new(inner.0)), Type::Number, range))
            }
            Kind::Number(n) => Ok((Expr::Number(n), Type::Number, token.range)),
            Kind::Name(name) => match name.as_str() {
                "true" | "false" => Ok((Expr::Bool(name == "true"), Type::Condition, token.range)),
                "and" | "or" | "not" => Err(GateSyntaxError {
                    message: format!("`{name}` needs a value before it"),
                    range: token.range,
                    hint: None,
                }),
                _ => Ok((Expr::Name(name), Type::Number, token.range)),
            },
            Kind::Open => {
                let inner = self.or()?;
                match self.peek() {
                    Some(Token {
                        kind: Kind::Close,
                        range,
                    }) => {
                        let end = range.end;
                        self.position += 1;
                        Ok((inner.0, inner.1, token.range.start..end))
                    }
                    Some(other) => Err(GateSyntaxError {
                        message: "expected `)`".into(),
                        range: other.range.clone(),
                        hint: None,
                    }),
                    None => Err(GateSyntaxError {
                        message: "this `(` is never closed".into(),
                        range: token.range,
                        hint: Some("add the missing `)`".into()),
                    }),
                }
            }
            Kind::Op(op) => Err(GateSyntaxError {
                message: format!("expected a metric name or a number, found `{op}`"),
                range: token.range,
                hint: None,
            }),
            Kind::Close => Err(GateSyntaxError {
                message: "unexpected `)`".into(),
                range: token.range,
                hint: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(name: &str) -> Lookup {
        match name {
            "accuracy" => Lookup::Value(0.95),
            "f1" => Lookup::Value(0.85),
            "loss" => Lookup::Value(0.2),
            "production.accuracy" => Lookup::Value(0.97),
            "staging.accuracy" => Lookup::Unavailable("no version is in `staging`".into()),
            _ => Lookup::Unknown,
        }
    }

    fn verdict(text: &str) -> Verdict {
        parse(text).unwrap().verdict(&metrics)
    }

    #[test]
    fn evaluates_thresholds_and_logic() {
        assert_eq!(verdict("accuracy >= 0.9"), Verdict::Pass);
        assert_eq!(verdict("accuracy > 0.96"), Verdict::Fail);
        assert_eq!(verdict("f1 > 0.8 and loss < 0.3"), Verdict::Pass);
        assert_eq!(verdict("f1 > 0.9 or not (loss >= 0.3)"), Verdict::Pass);
        assert_eq!(
            verdict("accuracy >= production.accuracy - 0.01"),
            Verdict::Fail
        );
        assert_eq!(
            verdict("accuracy >= production.accuracy - 0.03"),
            Verdict::Pass
        );
        assert_eq!(verdict("2 * loss + 0.1 <= 0.5"), Verdict::Pass);
        assert_eq!(verdict("accuracy >= 9.5e-1"), Verdict::Pass);
    }

    #[test]
    fn unavailable_references_skip_and_unknown_metrics_block() {
        assert!(matches!(
            verdict("accuracy >= staging.accuracy"),
            Verdict::Skipped(_)
        ));
        assert_eq!(
            verdict("recall > 0.5"),
            Verdict::UnknownMetric("recall".into())
        );
        assert!(verdict("recall > 0.5").blocks());
        // Short-circuit: the unavailable side is never read.
        assert_eq!(
            verdict("accuracy > 0.9 or accuracy >= staging.accuracy"),
            Verdict::Pass
        );
    }

    #[test]
    fn lists_the_metrics_it_reads() {
        let expr = parse("accuracy >= production.accuracy - 0.01 and accuracy > f1").unwrap();
        assert_eq!(expr.names(), vec!["accuracy", "production.accuracy", "f1"]);
        assert_eq!(expr.metric_names(), vec!["accuracy", "f1"]);
    }

    #[test]
    fn reports_mistakes_with_their_position() {
        let cases = [
            (
                "accuracy >= ",
                "the expression ends where a value was expected",
                12..13,
            ),
            ("accuracy = 0.9", "unexpected character `=`", 9..10),
            (
                "accuracy",
                "a gate must be a condition, but this is a number",
                0..8,
            ),
            (
                "accuracy >= 0.9 0.8",
                "unexpected `0.8` after a complete expression",
                16..19,
            ),
            ("(accuracy > 1", "this `(` is never closed", 0..1),
            (
                "accuracy and f1 > 0",
                "`and` needs a condition, but this is a number",
                0..8,
            ),
            (
                "0 < accuracy < 1",
                "comparisons cannot be chained (`<` after `<`)",
                13..14,
            ),
            ("accuracy >= 1.2.3", "`1.2.3` is not a number", 12..17),
        ];
        for (text, message, range) in cases {
            let error = parse(text).unwrap_err();
            assert_eq!(
                (error.message.as_str(), error.range),
                (message, range),
                "{text}"
            );
        }
    }
}
