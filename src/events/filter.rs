//! The filter language subscribers attach to a subscription, evaluated on an event's tags.
//!
//! Parsed and compiled once when the subscription is made; evaluating it is a walk over a small
//! tree that compares strings and numbers, with no allocation. Grammar (keywords in any case):
//!
//! ```text
//! filter     := or
//! or         := and ( "or" and )*
//! and        := unary ( "and" unary )*
//! unary      := "not" unary | "(" or ")" | comparison
//! comparison := key op value | key "in" "(" value ( "," value )* ")" | "has" key
//! op         := "=" | "!=" | "<" | "<=" | ">" | ">="
//! key        := [A-Za-z0-9_.-]+
//! value      := 'text' | "text" | number | word
//! ```
//!
//! Tags are strings. `=`, `!=` and `in` compare text, except that a number literal compares
//! numerically with a tag that reads as a number (`qty = 5` matches tag `5.0`). `<`, `<=`, `>`,
//! `>=` need a number literal and are false when the tag is missing or not a number. A missing
//! tag makes every comparison false except `!=`. See docs/events.md.

use std::collections::BTreeMap;

/// An event's tags.
pub type Tags = BTreeMap<String, String>;

/// Longest filter text, in bytes.
pub const MAX_FILTER_LEN: usize = 1024;
/// Deepest nesting of parentheses and `not`.
const MAX_DEPTH: usize = 16;
/// Most comparisons in one filter.
const MAX_TERMS: usize = 64;

/// Why a filter was refused (answered with `bad_filter`, 186).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad filter at byte {at}: {what}")]
pub struct FilterError {
    pub at: usize,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(String),
    Number(f64, String),
}

impl Value {
    fn equals(&self, tag: &str) -> bool {
        match self {
            Value::Text(text) => text == tag,
            Value::Number(n, text) => text == tag || tag.trim().parse::<f64>().is_ok_and(|t| t == *n),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Eq(String, Value),
    Ne(String, Value),
    Num(String, Cmp, f64),
    In(String, Vec<Value>),
    Has(String),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

impl Expr {
    fn eval(&self, tags: &Tags) -> bool {
        match self {
            Expr::Eq(key, v) => tags.get(key).is_some_and(|t| v.equals(t)),
            Expr::Ne(key, v) => !tags.get(key).is_some_and(|t| v.equals(t)),
            Expr::Num(key, cmp, n) => {
                tags.get(key).and_then(|t| t.trim().parse::<f64>().ok()).is_some_and(|t| match cmp {
                    Cmp::Lt => t < *n,
                    Cmp::Le => t <= *n,
                    Cmp::Gt => t > *n,
                    Cmp::Ge => t >= *n,
                })
            }
            Expr::In(key, values) => tags.get(key).is_some_and(|t| values.iter().any(|v| v.equals(t))),
            Expr::Has(key) => tags.contains_key(key),
            Expr::Not(e) => !e.eval(tags),
            Expr::And(all) => all.iter().all(|e| e.eval(tags)),
            Expr::Or(any) => any.iter().any(|e| e.eval(tags)),
        }
    }
}

/// A compiled filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    text: String,
    expr: Expr,
}

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.len() > MAX_FILTER_LEN {
            return Err(FilterError { at: MAX_FILTER_LEN, what: format!("longer than {MAX_FILTER_LEN} bytes") });
        }
        let tokens = lex(text)?;
        let mut parser = Parser { tokens, pos: 0, depth: 0, terms: 0, end: text.len() };
        let expr = parser.or()?;
        if let Some((at, tok)) = parser.tokens.get(parser.pos) {
            return Err(FilterError { at: *at, what: format!("unexpected {tok}") });
        }
        Ok(Filter { text: text.to_owned(), expr })
    }

    /// Whether an event with these tags passes.
    pub fn accepts(&self, tags: &Tags) -> bool {
        self.expr.eval(tags)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Text(String),
    Op(&'static str),
    Open,
    Close,
    Comma,
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Word(w) => write!(f, "{w:?}"),
            Tok::Text(t) => write!(f, "string {t:?}"),
            Tok::Op(op) => write!(f, "{op:?}"),
            Tok::Open => f.write_str("\"(\""),
            Tok::Close => f.write_str("\")\""),
            Tok::Comma => f.write_str("\",\""),
        }
    }
}

fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.-+".contains(c)
}

fn lex(text: &str) -> Result<Vec<(usize, Tok)>, FilterError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        let tok = match c {
            c if c.is_whitespace() => {
                chars.next();
                continue;
            }
            '(' | ')' | ',' => {
                chars.next();
                [Tok::Open, Tok::Close, Tok::Comma]["(),".find(c).unwrap_or(0)].clone()
            }
            '=' | '!' | '<' | '>' => {
                chars.next();
                let eq = chars.next_if(|&(_, n)| n == '=').is_some();
                Tok::Op(match (c, eq) {
                    ('=', _) => "=",
                    ('!', true) => "!=",
                    ('<', false) => "<",
                    ('<', true) => "<=",
                    ('>', false) => ">",
                    ('>', true) => ">=",
                    _ => return Err(FilterError { at, what: "expected \"!=\"".into() }),
                })
            }
            '\'' | '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, q)) if q == c => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, e)) => s.push(e),
                            None => return Err(FilterError { at, what: "unterminated string".into() }),
                        },
                        Some((_, ch)) => s.push(ch),
                        None => return Err(FilterError { at, what: "unterminated string".into() }),
                    }
                }
                Tok::Text(s)
            }
            c if word_char(c) => {
                let mut s = String::new();
                while let Some((_, ch)) = chars.next_if(|&(_, ch)| word_char(ch)) {
                    s.push(ch);
                }
                Tok::Word(s)
            }
            other => return Err(FilterError { at, what: format!("unexpected character {other:?}") }),
        };
        out.push((at, tok));
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(usize, Tok)>,
    pos: usize,
    depth: usize,
    terms: usize,
    end: usize,
}

fn keyword(tok: Option<&Tok>, kw: &str) -> bool {
    matches!(tok, Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn at(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(at, _)| *at)
    }

    fn fail<T>(&self, what: impl Into<String>) -> Result<T, FilterError> {
        let found = match self.tokens.get(self.pos) {
            Some((_, tok)) => format!(", found {tok}"),
            None => ", found the end".into(),
        };
        Err(FilterError { at: self.at(), what: format!("{}{found}", what.into()) })
    }

    fn next(&mut self) -> Option<Tok> {
        let tok = self.tokens.get(self.pos).map(|(_, t)| t.clone());
        self.pos += 1;
        tok
    }

    fn or(&mut self) -> Result<Expr, FilterError> {
        self.joined("or", Self::and, Expr::Or)
    }

    fn and(&mut self) -> Result<Expr, FilterError> {
        self.joined("and", Self::unary, Expr::And)
    }

    /// `operand (word operand)*`: one operand alone, or all of them under `join`.
    fn joined(
        &mut self,
        word: &str,
        operand: fn(&mut Self) -> Result<Expr, FilterError>,
        join: fn(Vec<Expr>) -> Expr,
    ) -> Result<Expr, FilterError> {
        let mut operands = vec![operand(self)?];
        while keyword(self.peek(), word) {
            self.pos += 1;
            operands.push(operand(self)?);
        }
        Ok(if operands.len() == 1 { operands.remove(0) } else { join(operands) })
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.fail(format!("nested deeper than {MAX_DEPTH}"));
        }
        let expr = if keyword(self.peek(), "not") {
            self.pos += 1;
            Expr::Not(Box::new(self.unary()?))
        } else if self.peek() == Some(&Tok::Open) {
            self.pos += 1;
            let inner = self.or()?;
            if self.peek() != Some(&Tok::Close) {
                return self.fail("expected \")\"");
            }
            self.pos += 1;
            inner
        } else {
            self.comparison()?
        };
        self.depth -= 1;
        Ok(expr)
    }

    fn key(&mut self) -> Result<String, FilterError> {
        match self.peek() {
            Some(Tok::Word(w)) if !["and", "or", "not", "in", "has"].iter().any(|k| w.eq_ignore_ascii_case(k)) => {
                let key = w.clone();
                self.pos += 1;
                Ok(key)
            }
            _ => self.fail("expected a tag name"),
        }
    }

    fn value(&mut self) -> Result<Value, FilterError> {
        match self.peek().cloned() {
            Some(Tok::Text(t)) => {
                self.pos += 1;
                Ok(Value::Text(t))
            }
            Some(Tok::Word(w)) => {
                self.pos += 1;
                Ok(match w.parse::<f64>() {
                    Ok(n) if n.is_finite() => Value::Number(n, w),
                    _ => Value::Text(w),
                })
            }
            _ => self.fail("expected a value"),
        }
    }

    fn comparison(&mut self) -> Result<Expr, FilterError> {
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return self.fail(format!("more than {MAX_TERMS} comparisons"));
        }
        if keyword(self.peek(), "has") {
            self.pos += 1;
            return Ok(Expr::Has(self.key()?));
        }
        let key = self.key()?;
        if keyword(self.peek(), "in") {
            self.pos += 1;
            if self.next() != Some(Tok::Open) {
                self.pos -= 1;
                return self.fail("expected \"(\" after in");
            }
            let mut values = vec![self.value()?];
            while self.peek() == Some(&Tok::Comma) {
                self.pos += 1;
                values.push(self.value()?);
            }
            if self.peek() != Some(&Tok::Close) {
                return self.fail("expected \",\" or \")\"");
            }
            self.pos += 1;
            return Ok(Expr::In(key, values));
        }
        let Some(Tok::Op(op)) = self.peek().cloned() else {
            return self.fail("expected an operator (= != < <= > >= in)");
        };
        self.pos += 1;
        let value = self.value()?;
        Ok(match (op, value) {
            ("=", v) => Expr::Eq(key, v),
            ("!=", v) => Expr::Ne(key, v),
            (op, Value::Number(n, _)) => {
                let cmp = match op {
                    "<" => Cmp::Lt,
                    "<=" => Cmp::Le,
                    ">" => Cmp::Gt,
                    _ => Cmp::Ge,
                };
                Expr::Num(key, cmp, n)
            }
            (op, Value::Text(_)) => {
                self.pos -= 1;
                return self.fail(format!("{op} needs a number"));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn passes(filter: &str, pairs: &[(&str, &str)]) -> bool {
        Filter::parse(filter).unwrap().accepts(&tags(pairs))
    }

    #[test]
    fn equality_membership_and_numbers() {
        let t = [("region", "eu"), ("qty", "12"), ("tier", "gold")];
        assert!(passes("region = eu", &t));
        assert!(passes("region = 'eu'", &t));
        assert!(!passes("region = us", &t));
        assert!(passes("region != us", &t));
        assert!(passes("missing != x", &t), "!= is true for a missing tag");
        assert!(!passes("missing = x", &t));
        assert!(passes("tier in (silver, gold)", &t));
        assert!(!passes("tier in ('bronze')", &t));
        assert!(passes("qty > 10 and qty <= 12", &t));
        assert!(!passes("qty < 12", &t));
        assert!(passes("qty = 12.0", &t), "a number literal compares numerically");
        assert!(!passes("region > 1", &t), "a tag that is not a number never compares");
        assert!(passes("has tier", &t));
        assert!(!passes("has price", &t));
    }

    #[test]
    fn and_or_not_with_precedence() {
        let t = [("a", "1"), ("b", "2")];
        assert!(passes("a = 1 or a = 2 and b = 3", &t), "and binds tighter than or");
        assert!(!passes("(a = 1 or a = 2) and b = 3", &t));
        assert!(passes("not b = 3", &t));
        assert!(passes("NOT (a = 2) AND b = 2", &t), "keywords in any case");
        assert!(passes("not not a = 1", &t));
        assert!(passes("x = \"a b\"", &[("x", "a b")]));
        assert!(passes(r#"x = "a \"q\"""#, &[("x", "a \"q\"")]));
    }

    #[test]
    fn bad_filters_say_where_and_why() {
        let cases = [
            ("", 0, "expected a tag name"),
            ("region", 6, "expected an operator"),
            ("region = ", 9, "expected a value"),
            ("a = 1 and", 9, "expected a tag name"),
            ("(a = 1", 6, "expected \")\""),
            ("a = 1)", 5, "unexpected \")\""),
            ("a < eu", 4, "< needs a number"),
            ("a in 1", 5, "expected \"(\""),
            ("a in (1 2)", 8, "expected \",\" or \")\""),
            ("a ! 1", 2, "expected \"!=\""),
            ("a = 'open", 4, "unterminated string"),
            ("a = 1 # x", 6, "unexpected character"),
            ("and = 1", 0, "expected a tag name"),
        ];
        for (text, at, what) in cases {
            let err = Filter::parse(text).unwrap_err();
            assert_eq!(err.at, at, "{text:?}: {err}");
            assert!(err.what.contains(what), "{text:?}: {err}");
        }
        let deep = format!("{}a = 1{}", "(".repeat(40), ")".repeat(40));
        assert!(Filter::parse(&deep).unwrap_err().what.contains("nested deeper"));
        let long = vec!["a = 1"; 70].join(" or ");
        assert!(Filter::parse(&long).unwrap_err().what.contains("more than 64"));
        assert!(Filter::parse(&"a".repeat(2000)).unwrap_err().what.contains("longer than"));
    }
}
