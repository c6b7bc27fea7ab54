//! `ADD`, `SUB`, `MUL`, `DIV` with two or more numbers: exact arithmetic, left to right
//! (`SUB 10 1 2` = `7`). No binary floating point anywhere: `ADD 0.1 0.2` = `0.3`.
//!
//! **Numbers.** Each operand is `[+-]?[0-9]+(\.[0-9]{1,18})?`: an optional sign, one or more
//! ASCII digits, and optionally a dot followed by one to eighteen digits. Nothing else is a
//! number: `.5`, `5.`, `1e5`, `0x10`, `1,5`, `1_000`, `+-1`, `inf`, non-ASCII digits and empty
//! tokens are all refused with [`ArithError::NotANumber`]. Leading zeros are fine (`007` = 7).
//! Also refused as `NotANumber` (naming the token): a number whose integer part (truncated toward
//! zero) is out of the `i64` range (`9223372036854775808`), and one written with more than 18
//! fractional digits, even zeros (`1.0000000000000000000`).
//!
//! **Values** are exact decimals: an `i128` mantissa and a scale of at most 18 fractional digits.
//! Integers are simply decimals with no fractional digits, so integer arithmetic is exactly
//! checked `i64` arithmetic (the seed's C `long`, minus the wrapping). Every result, and every
//! intermediate result of a chain, must have its integer part (truncated toward zero) inside the
//! `i64` range, or the request fails with [`ArithError::Overflow`] (never a wrapped value):
//! `ADD 9223372036854775807 1` and `DIV -9223372036854775808 -1` overflow, while
//! `ADD 9223372036854775807 0.5` = `9223372036854775807.5` is in range. Because the chain is
//! evaluated left to right, `ADD 9223372036854775807 1 -1` overflows at its first step.
//!
//! **Operations.**
//! - `ADD`, `SUB`: always exact.
//! - `MUL`: always exact. A product that would need more than 18 fractional digits
//!   (`MUL 0.000000001 0.0000000001` = 1e-19) cannot be represented and is refused as
//!   [`ArithError::TooPrecise`] rather than silently rounded.
//! - `DIV`: a divisor of zero (`0`, `0.0`, ...) is [`ArithError::DivisionByZero`]. A quotient
//!   that fits in 18 fractional digits is exact (`DIV 7 2` = `3.5`, `DIV 6 3` = `2`). Any other
//!   quotient — non-terminating (`DIV 1 3`) or terminating only after the 18th digit
//!   (`DIV 0.000000000000000001 2`) — is **rounded half to even at the 18th fractional digit**:
//!   `DIV 1 3` = `0.333333333333333333`, `DIV 2 3` = `0.666666666666666667`,
//!   `DIV 0.000000000000000001 2` = `0`, `DIV 0.000000000000000003 2` = `0.000000000000000002`.
//!   In a chain each step is rounded (`DIV 1 3 3` = `0.111111111111111111`).
//!
//! **Output.** Plain decimal notation, no exponent, no trailing fractional zeros, no `-0`:
//! `-12`, `3.5`, `0.3`, `-0.000000000000000001`. A result is printed as an integer when it is
//! whole: all-integer `ADD`/`SUB`/`MUL` and divisible `DIV` give integers, and a decimal result
//! that happens to be whole prints the same way (`ADD 0.5 0.5` = `1`, `MUL 2.5 4` = `10`).
//!
//! **Errors** are checked in this order: fewer than two tokens; then each token left to right
//! is parsed, the first that is not a number is reported even if an earlier step already failed;
//! then the first arithmetic failure (overflow, division by zero) in left-to-right order.
//!
//! Nothing here touches a socket; the caller answers `OK <result>` or `ERR 400 <error>`.

use std::fmt;

use crate::protocol::Arith;

/// The most fractional digits a value (operand or result) may have.
const MAX_SCALE: u32 = 18;

/// The longest token text kept in [`ArithError::NotANumber`].
const MAX_TOKEN_CHARS: usize = 32;

/// Why a computation is refused; `Display` is the human text after `ERR 400 ` (no code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArithError {
    /// Fewer than two numbers.
    TooFewNumbers,
    /// A token that is not a number (see the module docs for the grammar), or one out of range.
    /// Holds at most the token's first 32 bytes, each byte that is not printable ASCII, and each
    /// `"` and `\`, replaced by `?`: safe to quote in a reply line.
    NotANumber(String),
    /// A result (or intermediate result) out of range.
    Overflow,
    /// A product needing more than 18 fractional digits.
    TooPrecise,
    /// `DIV` by zero.
    DivisionByZero,
}

impl ArithError {
    /// `NotANumber` for a raw token: truncated and made safe to print.
    fn not_a_number(token: &[u8]) -> ArithError {
        let text = token
            .iter()
            .take(MAX_TOKEN_CHARS)
            .map(|&b| match b {
                b'"' | b'\\' => '?',
                b' '..=b'~' => char::from(b),
                _ => '?',
            })
            .collect();
        ArithError::NotANumber(text)
    }
}

impl fmt::Display for ArithError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArithError::TooFewNumbers => f.write_str("need two or more numbers"),
            ArithError::NotANumber(token) => write!(f, "not a number: \"{token}\""),
            ArithError::Overflow => f.write_str("overflow: result out of range"),
            ArithError::TooPrecise => f.write_str("result needs more than 18 decimal places"),
            ArithError::DivisionByZero => f.write_str("division by zero"),
        }
    }
}

impl std::error::Error for ArithError {}

/// Applies `op` to the numbers in `args`, left to right, and formats the result.
///
/// `args` are the raw whitespace-separated tokens after the verb (bytes from the wire, may be
/// invalid UTF-8). See the module docs for the number grammar, ranges, rounding and output form.
pub fn compute(op: Arith, args: &[&[u8]]) -> Result<String, ArithError> {
    let (first, rest) = match args {
        [first, rest @ ..] if !rest.is_empty() => (first, rest),
        _ => return Err(ArithError::TooFewNumbers),
    };
    let mut acc = Ok(Dec::parse(first)?);
    for token in rest {
        let x = Dec::parse(token)?;
        acc = acc.and_then(|a| a.apply(op, x));
    }
    acc.map(|d| d.to_string())
}

/// `10^n` as an `i128` (`n` at most 38).
fn pow10(n: u32) -> i128 {
    10i128.pow(n)
}

/// An exact decimal `mantissa / 10^scale`.
///
/// Invariants (kept by [`Dec::new`]): `scale <= MAX_SCALE`; no trailing zero digit when
/// `scale > 0` (so zero is `0/10^0` and equal values are equal structs); the integer part
/// (truncated toward zero) fits in an `i64`. Hence `|mantissa| < 2^63 * 10^18 < 2^123`: the
/// mantissa never is `i128::MIN` and can be negated, aligned to scale 18, or added to another
/// without overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dec {
    mantissa: i128,
    scale: u32,
}

impl Dec {
    const ZERO: Dec = Dec {
        mantissa: 0,
        scale: 0,
    };

    /// The value `mantissa / 10^scale` (`scale <= MAX_SCALE`), normalized and range-checked.
    fn new(mut mantissa: i128, mut scale: u32) -> Result<Dec, ArithError> {
        debug_assert!(scale <= MAX_SCALE);
        while scale > 0 && mantissa % 10 == 0 {
            mantissa /= 10;
            scale -= 1;
        }
        if i64::try_from(mantissa / pow10(scale)).is_err() {
            return Err(ArithError::Overflow);
        }
        Ok(Dec { mantissa, scale })
    }

    /// Parses `[+-]?[0-9]+(\.[0-9]{1,18})?` with its integer part in the `i64` range.
    fn parse(token: &[u8]) -> Result<Dec, ArithError> {
        Dec::parse_digits(token).ok_or_else(|| ArithError::not_a_number(token))
    }

    fn parse_digits(token: &[u8]) -> Option<Dec> {
        let (negative, unsigned) = match token.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, token),
        };
        let (int_digits, frac_digits) = match unsigned.iter().position(|&b| b == b'.') {
            Some(dot) => {
                let frac = &unsigned[dot + 1..];
                if frac.is_empty() || frac.len() > MAX_SCALE as usize {
                    return None;
                }
                (&unsigned[..dot], frac)
            }
            None => (unsigned, &[][..]),
        };
        let all_digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
        if int_digits.is_empty() || !all_digits(int_digits) || !all_digits(frac_digits) {
            return None;
        }
        // |integer part| may be at most 2^63 - 1, or 2^63 when negative.
        let limit = i128::from(i64::MAX) + i128::from(negative);
        let mut int: i128 = 0;
        for &d in int_digits {
            int = int * 10 + i128::from(d - b'0');
            if int > limit {
                return None;
            }
        }
        // At most (2^63 + 1) * 10^18: far inside i128.
        let mut mantissa = int;
        for &d in frac_digits {
            mantissa = mantissa * 10 + i128::from(d - b'0');
        }
        if negative {
            mantissa = -mantissa;
        }
        Dec::new(mantissa, frac_digits.len() as u32).ok()
    }

    fn apply(self, op: Arith, other: Dec) -> Result<Dec, ArithError> {
        match op {
            Arith::Add => self.add(other),
            Arith::Sub => self.add(Dec {
                mantissa: -other.mantissa,
                scale: other.scale,
            }),
            Arith::Mul => self.mul(other),
            Arith::Div => self.div(other),
        }
    }

    /// Exact sum.
    fn add(self, other: Dec) -> Result<Dec, ArithError> {
        let scale = self.scale.max(other.scale);
        let align = |d: Dec| d.mantissa.checked_mul(pow10(scale - d.scale));
        let sum = align(self)
            .zip(align(other))
            .and_then(|(a, b)| a.checked_add(b))
            .ok_or(ArithError::Overflow)?;
        Dec::new(sum, scale)
    }

    /// Exact product, `Overflow` if it is out of range, `TooPrecise` if it needs more than 18 fractional
    /// digits.
    fn mul(self, other: Dec) -> Result<Dec, ArithError> {
        if self.mantissa == 0 || other.mantissa == 0 {
            return Ok(Dec::ZERO);
        }
        let (mut a, mut b) = (self.mantissa, other.mantissa);
        let mut scale = self.scale + other.scale;
        if scale > MAX_SCALE {
            // The product a*b must be divisible by 10^excess to have at most 18 fractional
            // digits. Take the factors 2^excess and 5^excess out of a and b before multiplying:
            // exact, and the smaller product cannot overflow when the result is in range.
            let excess = scale - MAX_SCALE;
            for factor in [2, 5] {
                let mut left = excess;
                for m in [&mut a, &mut b] {
                    while left > 0 && *m % factor == 0 {
                        *m /= factor;
                        left -= 1;
                    }
                }
                if left > 0 {
                    // Out of range wins over too precise (a rough magnitude is enough to tell).
                    let magnitude = (self.mantissa as f64).abs() * (other.mantissa as f64).abs()
                        / 10f64.powi((self.scale + other.scale) as i32);
                    return Err(if magnitude >= i64::MAX as f64 {
                        ArithError::Overflow
                    } else {
                        ArithError::TooPrecise
                    });
                }
            }
            scale = MAX_SCALE;
        }
        // At scale <= 18 an in-range result has |mantissa| < 2^123: a product that overflows
        // i128 is out of range.
        Dec::new(a.checked_mul(b).ok_or(ArithError::Overflow)?, scale)
    }

    /// Quotient, exact when it fits in 18 fractional digits, else rounded half to even there.
    fn div(self, other: Dec) -> Result<Dec, ArithError> {
        if other.mantissa == 0 {
            return Err(ArithError::DivisionByZero);
        }
        // self/other * 10^18 = |a| * 10^places / |b|, computed by long division in u128.
        let places = MAX_SCALE + other.scale - self.scale;
        let n = self.mantissa.unsigned_abs();
        let d = other.mantissa.unsigned_abs();
        let (mut q, mut r) = (n / d, n % d);
        for _ in 0..places {
            // r < d < 2^123, so r * 10 < 2^127: no overflow.
            let r10 = r * 10;
            // q only grows: if it overflows u128 now, the final quotient is out of range.
            q = q
                .checked_mul(10)
                .and_then(|q| q.checked_add(r10 / d))
                .ok_or(ArithError::Overflow)?;
            r = r10 % d;
        }
        // Round half to even: the discarded part is r/d.
        let twice = r * 2;
        if twice > d || (twice == d && q % 2 == 1) {
            q = q.checked_add(1).ok_or(ArithError::Overflow)?;
        }
        let magnitude = i128::try_from(q).map_err(|_| ArithError::Overflow)?;
        let negative = (self.mantissa < 0) != (other.mantissa < 0);
        Dec::new(if negative { -magnitude } else { magnitude }, MAX_SCALE)
    }
}

impl fmt::Display for Dec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scale == 0 {
            return write!(f, "{}", self.mantissa);
        }
        let unit = 10u128.pow(self.scale);
        let abs = self.mantissa.unsigned_abs();
        let sign = if self.mantissa < 0 { "-" } else { "" };
        write!(
            f,
            "{sign}{}.{:0width$}",
            abs / unit,
            abs % unit,
            width = self.scale as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ArithError::{DivisionByZero, Overflow, TooFewNumbers, TooPrecise};

    /// Runs `op` on the whitespace-separated tokens of `line`.
    fn run(op: Arith, line: &str) -> Result<String, ArithError> {
        let tokens: Vec<&[u8]> = line.split_ascii_whitespace().map(str::as_bytes).collect();
        compute(op, &tokens)
    }

    fn nan(token: &str) -> ArithError {
        ArithError::NotANumber(token.to_string())
    }

    type Case = (Arith, &'static str, Result<&'static str, ArithError>);

    fn check(table: &[Case]) {
        for (op, line, want) in table {
            let got = run(*op, line);
            let want = want.clone().map(str::to_string);
            assert_eq!(got, want, "{op:?} {line}");
        }
    }

    const MAX: &str = "9223372036854775807";
    const MIN: &str = "-9223372036854775808";

    #[test]
    fn integers() {
        use Arith::*;
        check(&[
            (Add, "1 2", Ok("3")),
            (Add, "1 2 3", Ok("6")),
            (Add, "-5 3", Ok("-2")),
            (Add, "+5 -3", Ok("2")),
            (Add, "007 1", Ok("8")),
            (Add, "-0 0", Ok("0")),
            (Sub, "10 1 2", Ok("7")),
            (Sub, "1 2", Ok("-1")),
            (Sub, "-1 -1", Ok("0")),
            (Mul, "-3 4", Ok("-12")),
            (Mul, "-3 -4", Ok("12")),
            (Mul, "2 3 4", Ok("24")),
            (Mul, "0 -7", Ok("0")),
            (Div, "6 3", Ok("2")),
            (Div, "-6 3", Ok("-2")),
            (Div, "12 2 3", Ok("2")),
            (Div, "0 5", Ok("0")),
            (Div, "0 -5", Ok("0")),
            (Div, "7 2", Ok("3.5")),
            (Div, "-7 2", Ok("-3.5")),
            (Div, "7 -2", Ok("-3.5")),
            (Div, "-7 -2", Ok("3.5")),
            (Div, "7 2 2", Ok("1.75")),
            (Div, "1 8", Ok("0.125")),
            (Div, "1 1024", Ok("0.0009765625")),
        ]);
    }

    #[test]
    fn integer_edges_overflow_instead_of_wrapping() {
        use Arith::*;
        let cases: Vec<(Arith, String, Result<&str, ArithError>)> = vec![
            (Add, format!("{MAX} 0"), Ok(MAX)),
            (Add, format!("{MAX} 1"), Err(Overflow)),
            (Add, format!("1 {MAX}"), Err(Overflow)),
            (Add, format!("{MAX} 1 -1"), Err(Overflow)), // left to right
            (Add, format!("{MAX} -1 1"), Ok(MAX)),
            (Add, format!("{MIN} -1"), Err(Overflow)),
            (Add, format!("{MIN} {MAX}"), Ok("-1")),
            (Sub, format!("{MIN} 1"), Err(Overflow)),
            (Sub, format!("0 {MIN}"), Err(Overflow)),
            (Sub, format!("-1 {MIN}"), Ok(MAX)),
            (Sub, format!("{MAX} {MIN}"), Err(Overflow)),
            (Sub, format!("0 {MAX}"), Ok("-9223372036854775807")),
            (Mul, format!("{MIN} 1"), Ok(MIN)),
            (Mul, format!("{MIN} -1"), Err(Overflow)),
            (Mul, format!("{MAX} -1"), Ok("-9223372036854775807")),
            (Mul, format!("{MAX} 2"), Err(Overflow)),
            (Mul, "4294967296 4294967296".into(), Err(Overflow)),
            (Mul, "4294967296 -2147483648".into(), Ok(MIN)),
            (
                Mul,
                "3037000499 3037000499".into(),
                Ok("9223372030926249001"),
            ),
            (Mul, "3037000500 3037000500".into(), Err(Overflow)),
            (Mul, format!("{MAX} {MAX} 0"), Err(Overflow)), // left to right
            (Mul, format!("0 {MAX} {MAX}"), Ok("0")),
            (Div, format!("{MIN} -1"), Err(Overflow)),
            (Div, format!("{MIN} 1"), Ok(MIN)),
            (Div, format!("{MIN} 2"), Ok("-4611686018427387904")),
            (Div, format!("{MAX} {MAX}"), Ok("1")),
            (Div, format!("{MIN} {MIN}"), Ok("1")),
            // -0.99999999999999999989... rounds to -1.
            (Div, format!("{MAX} {MIN}"), Ok("-1")),
            (Div, format!("{MIN} {MAX}"), Ok("-1")), // -1.000000000000000000108...
            (Div, format!("{MIN} 0.999999999999999999"), Err(Overflow)),
            (Div, format!("{MIN} -2"), Ok("4611686018427387904")),
            (Div, "1 0".into(), Err(DivisionByZero)),
            (Div, "0 0".into(), Err(DivisionByZero)),
            (Div, "5 0.0".into(), Err(DivisionByZero)),
            (Div, "5 -0".into(), Err(DivisionByZero)),
            (Div, "10 2 0".into(), Err(DivisionByZero)),
            (Div, format!("{MIN} -1 0"), Err(Overflow)), // the first failure wins
            (Div, format!("1 0 {MIN} -1"), Err(DivisionByZero)),
        ];
        for (op, line, want) in cases {
            let want = want.map(str::to_string);
            assert_eq!(run(op, &line), want, "{op:?} {line}");
        }
    }

    #[test]
    fn integers_agree_with_checked_i64() {
        let values: &[i64] = &[
            i64::MIN,
            i64::MIN + 1,
            -4611686018427387904,
            -3037000500,
            -1000,
            -7,
            -3,
            -2,
            -1,
            0,
            1,
            2,
            3,
            7,
            1000,
            3037000499,
            4611686018427387904,
            i64::MAX - 1,
            i64::MAX,
        ];
        for &a in values {
            for &b in values {
                let line = format!("{a} {b}");
                let expect = |r: Option<i64>| r.map(|v| v.to_string()).ok_or(Overflow);
                assert_eq!(
                    run(Arith::Add, &line),
                    expect(a.checked_add(b)),
                    "ADD {line}"
                );
                assert_eq!(
                    run(Arith::Sub, &line),
                    expect(a.checked_sub(b)),
                    "SUB {line}"
                );
                assert_eq!(
                    run(Arith::Mul, &line),
                    expect(a.checked_mul(b)),
                    "MUL {line}"
                );
                let div = run(Arith::Div, &line);
                if b == 0 {
                    assert_eq!(div, Err(DivisionByZero), "DIV {line}");
                } else if a.checked_rem(b).is_none() {
                    assert_eq!(div, Err(Overflow), "DIV {line}"); // MIN / -1
                } else if a.checked_rem(b) == Some(0) {
                    assert_eq!(div, expect(a.checked_div(b)), "DIV {line}");
                } else {
                    // Reference: a * 10^18 / b rounded half to even, in i128.
                    let n = i128::from(a) * 10i128.pow(18);
                    let (d, q, r) = (i128::from(b), n / i128::from(b), n % i128::from(b));
                    let twice = 2 * r.abs();
                    let away = twice > d.abs() || (twice == d.abs() && q % 2 != 0);
                    let q = if away { q + n.signum() * d.signum() } else { q };
                    let want = Dec::new(q, 18).unwrap().to_string();
                    assert_eq!(div, Ok(want), "DIV {line}");
                }
            }
        }
    }

    #[test]
    fn decimals_are_exact() {
        use Arith::*;
        check(&[
            (Add, "0.1 0.2", Ok("0.3")),
            (Add, "0.1 0.2 0.3", Ok("0.6")),
            (Sub, "0.3 0.1", Ok("0.2")),
            (Sub, "1.5 0.25", Ok("1.25")),
            (Sub, "0.1 0.1", Ok("0")),
            (Sub, "-0.1 -0.1", Ok("0")),
            (Add, "1.10 2.20", Ok("3.3")),
            (Add, "1.000000000000000000 0", Ok("1")),
            (
                Add,
                "0.000000000000000001 -0.000000000000000002",
                Ok("-0.000000000000000001"),
            ),
            (Add, "0.000000000000000001 0.999999999999999999", Ok("1")),
            (Mul, "1.5 1.5", Ok("2.25")),
            (Mul, "-1.5 1.5", Ok("-2.25")),
            (Mul, "0.1 0.1 0.1", Ok("0.001")),
            (Mul, "0.000000001 0.000000001", Ok("0.000000000000000001")),
            (
                Mul,
                "99999999.999999999 99999999.999999999",
                Ok("9999999999999999.800000000000000001"),
            ),
            (
                Mul,
                "123456789.123456789 1000000000",
                Ok("123456789123456789"),
            ),
            (Mul, "0.0 -5.5", Ok("0")),
            (Div, "10 4", Ok("2.5")),
            (Div, "1.5 0.5", Ok("3")),
            (Div, "0.3 0.1", Ok("3")),
            (Div, "1 0.000000000000000001", Ok("1000000000000000000")),
            (Div, "0.000000000000000001 1", Ok("0.000000000000000001")),
            (
                Div,
                "-0.000000000000000001 0.5",
                Ok("-0.000000000000000002"),
            ),
        ]);
    }

    #[test]
    fn division_rounds_half_to_even_at_18_digits() {
        use Arith::*;
        check(&[
            (Div, "1 3", Ok("0.333333333333333333")),
            (Div, "2 3", Ok("0.666666666666666667")),
            (Div, "-2 3", Ok("-0.666666666666666667")),
            (Div, "2 -3", Ok("-0.666666666666666667")),
            (Div, "1 6", Ok("0.166666666666666667")),
            (Div, "1 7", Ok("0.142857142857142857")),
            (Div, "10 3", Ok("3.333333333333333333")),
            (Div, "1 3 3", Ok("0.111111111111111111")),
            (Div, "0.1 3", Ok("0.033333333333333333")),
            (Div, "1 0.3", Ok("3.333333333333333333")),
            // Exact ties at the 19th digit go to the even 18th digit.
            (Div, "0.000000000000000001 2", Ok("0")),
            (Div, "0.000000000000000001 -2", Ok("0")),
            (Div, "0.000000000000000003 2", Ok("0.000000000000000002")),
            (Div, "0.000000000000000005 2", Ok("0.000000000000000002")),
            (Div, "0.000000000000000007 2", Ok("0.000000000000000004")),
            (Div, "-0.000000000000000003 2", Ok("-0.000000000000000002")),
            (Div, "-0.000000000000000005 2", Ok("-0.000000000000000002")),
            (Div, "0.000000000000000009 4", Ok("0.000000000000000002")), // 2.25 -> 2
            (Div, "0.000000000000000011 4", Ok("0.000000000000000003")), // 2.75 -> 3
            (Div, "1 3000000000000000000", Ok("0")),                     // 3.3e-19
            (Div, "2 3000000000000000000", Ok("0.000000000000000001")),  // 6.7e-19
            // Rounding up can carry into the integer part: 0.999...999|666... -> 1.
            (Div, "2.999999999999999999 3", Ok("1")),
            (Div, "-2.999999999999999999 3", Ok("-1")),
            (Div, "2.999999999999999998 3", Ok("0.999999999999999999")), // ...999|333
            (Div, "1.999999999999999999 1.999999999999999999", Ok("1")),
        ]);
        // Near the range boundary.
        let near = "9223372036854775807.999999999999999999";
        // near / 1.000000000000000001 is a hair below near: no overflow, rounded.
        assert!(run(Div, &format!("{near} 1.000000000000000001")).is_ok());
        assert_eq!(run(Div, &format!("{near} 1")), Ok(near.to_string()));
        assert_eq!(
            run(Div, &format!("{near} 0.999999999999999999")),
            Err(Overflow)
        );
    }

    #[test]
    fn decimal_range_and_precision_limits() {
        use Arith::*;
        let near = "9223372036854775807.999999999999999999";
        let cases: Vec<(Arith, String, Result<&str, ArithError>)> = vec![
            (Add, format!("{MAX} 0.5"), Ok("9223372036854775807.5")),
            (Add, format!("{MAX}.5 0.5"), Err(Overflow)),
            (Add, format!("{near} 0"), Ok(near)),
            (Add, format!("{near} 0.000000000000000001"), Err(Overflow)),
            (Add, format!("{MIN}.5 0"), Ok("-9223372036854775808.5")),
            (Add, format!("{MIN}.5 0.5"), Ok(MIN)),
            (Sub, format!("{MIN}.5 0.5"), Err(Overflow)),
            (Add, format!("{MIN}.5 -0.49"), Ok("-9223372036854775808.99")),
            (Add, format!("{MIN}.5 -0.5"), Err(Overflow)),
            (Sub, format!("-{near} {near}"), Err(Overflow)),
            (Mul, format!("{near} 1"), Ok(near)),
            (
                Mul,
                format!("{near} -1"),
                Ok("-9223372036854775807.999999999999999999"),
            ),
            (Mul, format!("{near} 2"), Err(Overflow)),
            (Mul, format!("{near} {near}"), Err(Overflow)), // mantissa product > i128
            (Mul, format!("{MAX}.5 0.5"), Ok("4611686018427387903.75")),
            (Mul, format!("{near} 0.5"), Err(TooPrecise)), // 19 digits needed
            (Mul, format!("{MAX}.5 2"), Err(Overflow)),    // out of range
            (Mul, "4611686018427387903.5 2".into(), Ok(MAX)),
            (Mul, "4294967296.5 4294967296.5".into(), Err(Overflow)),
            (
                Mul,
                "1000000000.000000001 1000000000.000000001".into(),
                Ok("1000000000000000002.000000000000000001"),
            ),
            // The i128 mantissa product itself overflows (~8.5e55 at scale 18).
            (
                Mul,
                format!("{MAX}.000000001 {MAX}.000000001"),
                Err(Overflow),
            ),
            // The mantissa fits, the value does not.
            (
                Mul,
                "3037000500.000000001 3037000500.000000001".into(),
                Err(Overflow),
            ),
            // 19+ fractional digits needed.
            (
                Mul,
                "1000000000.0000000001 1000000000.0000000001".into(),
                Err(TooPrecise),
            ),
            (Mul, "0.000000001 0.0000000001".into(), Err(TooPrecise)), // 1e-19
            (Mul, "0.000000000000000001 0.5".into(), Err(TooPrecise)), // 5e-19
            // Trailing zeros of the product are cancelled first, so these are exact.
            (
                Mul,
                "0.000000000000000005 0.2".into(),
                Ok("0.000000000000000001"),
            ),
            (
                Mul,
                "0.000000000000000025 0.04".into(),
                Ok("0.000000000000000001"),
            ),
            (Mul, "0.000000000000000002 0.5 0.5".into(), Err(TooPrecise)),
            (
                Mul,
                "0.000000000000000004 0.5 0.5".into(),
                Ok("0.000000000000000001"),
            ),
            (
                Mul,
                "0.000000000000000001 1000000000000000000".into(),
                Ok("1"),
            ),
            (
                Mul,
                "0.000000000000000001 0.000000000000000001 1000000000000000000".into(),
                Err(TooPrecise),
            ),
            (Div, format!("{MAX} 0.5"), Err(Overflow)),
            (Div, "10 0.000000000000000001".into(), Err(Overflow)),
            (Div, format!("{near} 0.000000000000000001"), Err(Overflow)),
        ];
        for (op, line, want) in cases {
            let want = want.map(str::to_string);
            assert_eq!(run(op, &line), want, "{op:?} {line}");
        }
    }

    #[test]
    fn mixed_integers_and_decimals() {
        use Arith::*;
        check(&[
            (Add, "1 0.5", Ok("1.5")),
            (Add, "0.5 0.5", Ok("1")),
            (Add, "1 2 0.25", Ok("3.25")),
            (Sub, "10 0.1", Ok("9.9")),
            (Sub, "1.0 1", Ok("0")),
            (Mul, "2.5 4", Ok("10")),
            (Mul, "-2 0.25", Ok("-0.5")),
            (Div, "7.5 2.5", Ok("3")),
            (Div, "1 0.5", Ok("2")),
            (Div, "1 0.75", Ok("1.333333333333333333")),
            (Div, "2.5 2", Ok("1.25")),
        ]);
    }

    #[test]
    fn refuses_what_is_not_a_number() {
        let bad: &[&str] = &[
            "abc",
            "1e5",
            "1E5",
            "0x10",
            "1,5",
            "1_000",
            ".5",
            "-.5",
            "5.",
            "-5.",
            ".",
            "-",
            "+",
            "--1",
            "+-1",
            "-+1",
            "1.2.3",
            "1..2",
            "1-",
            "1+1",
            "inf",
            "NaN",
            "1.0000000000000000000", // 19 fractional digits
            "0.0000000000000000001",
            "9223372036854775808",
            "-9223372036854775809",
            "9223372036854775808.0",
            "-9223372036854775809.5",
            "18446744073709551616",
        ];
        for token in bad {
            let line = format!("1 {token}");
            assert_eq!(run(Arith::Add, &line), Err(nan(token)), "{token}");
            let line = format!("{token} 1");
            assert_eq!(run(Arith::Div, &line), Err(nan(token)), "{token}");
        }
        // Boundaries that are numbers.
        for good in [
            "1.000000000000000000",
            "0.000000000000000001",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775807.999999999999999999",
            "-9223372036854775808.999999999999999999",
            "00000000000000000000000000000000000000000001",
            "+0",
            "-0.0",
        ] {
            assert!(run(Arith::Add, &format!("{good} 0")).is_ok(), "{good}");
        }
    }

    #[test]
    fn not_a_number_is_truncated_and_safe_to_print() {
        let table: &[(&[u8], &str)] = &[
            (b"", ""),
            (b"\xff1", "?1"),
            (b"1\x1b[2J", "1?[2J"),
            (b"1\"", "1?"),
            (b"a\\b", "a?b"),
            (b"\x001\x7f", "?1?"),
            (b"1\r\n", "1??"),
            ("١".as_bytes(), "??"), // an Arabic-Indic digit is not a digit here
            ("1½".as_bytes(), "1??"),
            (
                b"123456789012345678901234567890123456789",
                "12345678901234567890123456789012",
            ),
            (b"x\xe2\x80\xae1234567890", "x???1234567890"),
        ];
        for (token, want) in table {
            let got = compute(Arith::Add, &[b"1", token]);
            assert_eq!(got, Err(nan(want)), "{}", String::from_utf8_lossy(token));
        }
        let long = [b'9'; 100];
        let err = compute(Arith::Mul, &[&long, b"1"]).unwrap_err();
        assert_eq!(err, nan(&"9".repeat(32)));
    }

    #[test]
    fn errors_in_order() {
        use Arith::*;
        check(&[
            (Add, "", Err(TooFewNumbers)),
            (Add, "1", Err(TooFewNumbers)),
            (Div, "abc", Err(TooFewNumbers)),
            (Add, "x y", Err(nan("x"))),
            (Add, "1 x y", Err(nan("x"))),
            // A bad token is reported even after an arithmetic failure.
            (Add, "9223372036854775807 1 x", Err(nan("x"))),
            (Div, "1 0 x", Err(nan("x"))),
            (Div, "1 0 2", Err(DivisionByZero)),
        ]);
        assert_eq!(compute(Arith::Add, &[]), Err(TooFewNumbers));
    }

    #[test]
    fn display_texts() {
        assert_eq!(TooFewNumbers.to_string(), "need two or more numbers");
        assert_eq!(nan("abc").to_string(), "not a number: \"abc\"");
        assert_eq!(
            ArithError::not_a_number(b"a\"b\n").to_string(),
            "not a number: \"a?b?\""
        );
        assert_eq!(Overflow.to_string(), "overflow: result out of range");
        assert_eq!(DivisionByZero.to_string(), "division by zero");
    }

    #[test]
    fn verbs_are_case_insensitive() {
        let table: &[(&[u8], Option<Arith>)] = &[
            (b"ADD", Some(Arith::Add)),
            (b"add", Some(Arith::Add)),
            (b"aDd", Some(Arith::Add)),
            (b"SUB", Some(Arith::Sub)),
            (b"sub", Some(Arith::Sub)),
            (b"MUL", Some(Arith::Mul)),
            (b"Mul", Some(Arith::Mul)),
            (b"DIV", Some(Arith::Div)),
            (b"div", Some(Arith::Div)),
            (b"", None),
            (b"AD", None),
            (b"ADDS", None),
            (b"ADD ", None),
            (b"MSG", None),
            (b"\xffDD", None),
        ];
        for (verb, want) in table {
            assert_eq!(
                Arith::from_verb(verb),
                *want,
                "{}",
                String::from_utf8_lossy(verb)
            );
        }
    }

    #[test]
    fn formats_without_exponent_or_trailing_zeros() {
        let table: &[(i128, u32, &str)] = &[
            (0, 0, "0"),
            (0, 5, "0"),
            (-12, 0, "-12"),
            (35, 1, "3.5"),
            (30, 1, "3"),
            (3, 1, "0.3"),
            (-1, 18, "-0.000000000000000001"),
            (1_000_000, 18, "0.000000000001"),
            (-1_500, 3, "-1.5"),
            (i128::from(i64::MIN), 0, "-9223372036854775808"),
        ];
        for &(m, s, want) in table {
            assert_eq!(Dec::new(m, s).unwrap().to_string(), want, "{m}e-{s}");
        }
    }
}
