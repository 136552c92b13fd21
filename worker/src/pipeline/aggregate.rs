//! Aggregate functions as accumulators: what a window keeps per output, how an input
//! updates it, how two merge (sessions), its result, and its bytes in the state store.
//!
//! Every sum is exact: integers in `i128`, doubles in an [`ExactSum`], so neither the order
//! of the inputs nor a session merge changes a result, and only the result is rounded,
//! once, to the nearest double. `sum`, `min` and `max` give an integer, with all its
//! digits, when every input was an integer, and a double otherwise; `avg` is always a
//! double. An input that would take a result beyond what it can be (a double sum beyond
//! the largest double, an integer sum beyond 128 bits) is refused by [`Accumulator::check`]
//! and the engine sends its event to the dead letters (`aggregate-overflow`).

pub mod exact_sum;

use std::io::Write as _;

use serde_json::{Number, Value};
use sluice_crds::pipeline::AggregateFunction;

pub use exact_sum::ExactSum;

/// A numeric aggregate input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number128 {
    /// An integer (JSON integers from `i64::MIN` to `u64::MAX`).
    Integer(i128),
    /// Any other number (finite: JSON has no infinities).
    Double(f64),
}

impl Number128 {
    /// The number of a JSON value, if it is one.
    pub fn of(value: &Value) -> Option<Self> {
        let Value::Number(number) = value else {
            return None;
        };
        Some(if let Some(integer) = number.as_i64() {
            Self::Integer(i128::from(integer))
        } else if let Some(unsigned) = number.as_u64() {
            Self::Integer(i128::from(unsigned))
        } else {
            Self::Double(number.as_f64()?)
        })
    }
}

/// Why an input cannot be added to a window's accumulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AggregateOverflow {
    /// A sum with a double input would be beyond the largest double.
    #[error("the sum would be beyond the largest double (about 1.8e308 either way)")]
    DoubleSum,
    /// An integer sum would be beyond 128 bits (it takes about 2^63 inputs).
    #[error("the integer sum would be beyond 128 bits")]
    IntegerSum,
    /// A count would be beyond 2^64 - 1.
    #[error("the count would be beyond 2^64 - 1")]
    Count,
}

/// The value of one aggregate output in a result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AggregateValue {
    /// An exact integer: a count, or a sum, min or max of integers only.
    Integer(i128),
    /// A double (finite, and never `-0.0`): an avg, or a sum, min or max with a double
    /// input.
    Double(f64),
    /// No input yet (a window exists only once an event is in it, so no result has it).
    Null,
}

impl AggregateValue {
    /// Appends the JSON text: an integer with all its digits, also beyond 64 bits (JSON
    /// numbers have no size limit), a double as serde_json writes it: its shortest
    /// round-trip form (`275.0`, `0.1`, `1e+20`).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Self::Integer(integer) => {
                let _ = write!(out, "{integer}");
            }
            Self::Double(double) => {
                let _ = serde_json::to_writer(&mut *out, double);
            }
            Self::Null => out.extend_from_slice(b"null"),
        }
    }

    /// The value as JSON, as the stages after the window see it: a serde_json (and CEL)
    /// integer has 64 bits, so an integer beyond them becomes the nearest double.
    pub fn to_json(&self) -> Value {
        match *self {
            Self::Integer(integer) => {
                if let Ok(small) = i64::try_from(integer) {
                    Value::from(small)
                } else if let Ok(unsigned) = u64::try_from(integer) {
                    Value::from(unsigned)
                } else {
                    #[allow(clippy::cast_precision_loss)]
                    double(integer as f64)
                }
            }
            Self::Double(value) => double(value),
            Self::Null => Value::Null,
        }
    }
}

/// Compares with a JSON value as the stages after the window see it ([`AggregateValue::to_json`]).
impl PartialEq<Value> for AggregateValue {
    fn eq(&self, other: &Value) -> bool {
        self.to_json() == *other
    }
}

/// The running state of one aggregate output in one window.
#[derive(Clone, Debug, PartialEq)]
pub enum Accumulator {
    /// Number of events.
    Count(u64),
    /// Sum: integers and doubles apart, both exactly.
    Sum {
        /// Sum of the integer inputs.
        integers: i128,
        /// Sum of the double inputs.
        doubles: ExactSum,
        /// Whether any input was a double.
        any_double: bool,
    },
    /// Least or greatest input so far.
    Extreme {
        /// `true` for max, `false` for min.
        greatest: bool,
        /// The extreme integer input.
        integer: Option<i128>,
        /// The extreme double input (`-0.0` kept as `0.0`).
        double: Option<f64>,
    },
    /// Mean: sum and count.
    Average {
        /// Sum of the integer inputs.
        integers: i128,
        /// Sum of the double inputs.
        doubles: ExactSum,
        /// Number of inputs.
        count: u64,
    },
}

/// Whether `integers + doubles (+ extra)`, rounded to a double, is finite.
fn finite_total(integers: i128, doubles: &ExactSum, extra: f64) -> Result<(), AggregateOverflow> {
    // Far from the largest double (about 2^1024), skip the exact sum: each of the three
    // parts is below 2^1020, so the total is below 2^1022.
    const FAR: f64 = 1.0e306;
    if doubles.magnitude_bits() <= 1020 && extra.abs() < FAR {
        return Ok(());
    }
    let mut total = doubles.clone();
    total.add_integer(integers);
    total.add_f64(extra);
    if total.to_f64().is_finite() {
        Ok(())
    } else {
        Err(AggregateOverflow::DoubleSum)
    }
}

impl Accumulator {
    /// The empty accumulator of `function`.
    pub fn new(function: AggregateFunction) -> Self {
        match function {
            AggregateFunction::Count => Self::Count(0),
            AggregateFunction::Sum => Self::Sum {
                integers: 0,
                doubles: ExactSum::default(),
                any_double: false,
            },
            AggregateFunction::Min | AggregateFunction::Max => Self::Extreme {
                greatest: function == AggregateFunction::Max,
                integer: None,
                double: None,
            },
            AggregateFunction::Avg => Self::Average {
                integers: 0,
                doubles: ExactSum::default(),
                count: 0,
            },
        }
    }

    /// Whether one event (`input` is `None` for count) can be added: a sum with a double
    /// input must stay within the doubles, an integer sum within 128 bits.
    pub fn check(&self, input: Option<Number128>) -> Result<(), AggregateOverflow> {
        match (self, input) {
            (Self::Count(count), _) => count
                .checked_add(1)
                .map(|_| ())
                .ok_or(AggregateOverflow::Count),
            (
                Self::Sum {
                    integers,
                    doubles,
                    any_double,
                },
                Some(number),
            ) => match number {
                Number128::Integer(integer) => {
                    let integers = integers
                        .checked_add(integer)
                        .ok_or(AggregateOverflow::IntegerSum)?;
                    if *any_double {
                        finite_total(integers, doubles, 0.0)
                    } else {
                        Ok(())
                    }
                }
                Number128::Double(double) => finite_total(*integers, doubles, double),
            },
            (
                Self::Average {
                    integers, count, ..
                },
                Some(number),
            ) => {
                count.checked_add(1).ok_or(AggregateOverflow::Count)?;
                if let Number128::Integer(integer) = number {
                    integers
                        .checked_add(integer)
                        .ok_or(AggregateOverflow::IntegerSum)?;
                }
                // (The mean of doubles is never beyond the largest of them.)
                Ok(())
            }
            (Self::Extreme { .. }, _) | (_, None) => Ok(()),
        }
    }

    /// Adds one event (`input` is `None` for count). Call [`Self::check`] first: an input
    /// it refuses would leave the rules (an integer sum would saturate, a double sum would
    /// write as `null`).
    pub fn add(&mut self, input: Option<Number128>) {
        match (self, input) {
            (Self::Count(count), _) => *count = count.saturating_add(1),
            (
                Self::Sum {
                    integers,
                    doubles,
                    any_double,
                },
                Some(number),
            ) => match number {
                Number128::Integer(integer) => *integers = integers.saturating_add(integer),
                Number128::Double(double) => {
                    doubles.add_f64(double);
                    *any_double = true;
                }
            },
            (
                Self::Extreme {
                    greatest,
                    integer,
                    double,
                },
                Some(number),
            ) => {
                let greatest = *greatest;
                match number {
                    Number128::Integer(value) => {
                        *integer = Some(integer.map_or(value, |old| {
                            if greatest {
                                old.max(value)
                            } else {
                                old.min(value)
                            }
                        }));
                    }
                    Number128::Double(value) => {
                        // `-0.0 + 0.0` is `0.0`: zero has one sign here, so which of two
                        // equal zeros came first cannot show.
                        let value = value + 0.0;
                        *double = Some(double.map_or(value, |old| {
                            let replaces = if greatest { value > old } else { value < old };
                            if replaces { value } else { old }
                        }));
                    }
                }
            }
            (
                Self::Average {
                    integers,
                    doubles,
                    count,
                },
                Some(number),
            ) => {
                match number {
                    Number128::Integer(integer) => *integers = integers.saturating_add(integer),
                    Number128::Double(double) => doubles.add_f64(double),
                }
                *count = count.saturating_add(1);
            }
            (_, None) => {}
        }
    }

    /// Folds another accumulator of the same function into this one (merging sessions),
    /// exactly. Fails, leaving this one unchanged, when an integer sum or a count would
    /// leave its range; a double sum may pass the largest double here, as the event that
    /// caused the merge is then [checked](Self::check) against the merged sum.
    pub fn merge(&mut self, other: &Accumulator) -> Result<(), AggregateOverflow> {
        if let (
            Self::Extreme { .. },
            Self::Extreme {
                integer, double, ..
            },
        ) = (&*self, other)
        {
            let (integer, double) = (*integer, *double);
            if let Some(value) = integer {
                self.add(Some(Number128::Integer(value)));
            }
            if let Some(value) = double {
                self.add(Some(Number128::Double(value)));
            }
            return Ok(());
        }
        match (self, other) {
            (Self::Count(count), Self::Count(other)) => {
                *count = count.checked_add(*other).ok_or(AggregateOverflow::Count)?;
            }
            (
                Self::Sum {
                    integers,
                    doubles,
                    any_double,
                },
                Self::Sum {
                    integers: other_integers,
                    doubles: other_doubles,
                    any_double: other_any,
                },
            ) => {
                *integers = integers
                    .checked_add(*other_integers)
                    .ok_or(AggregateOverflow::IntegerSum)?;
                doubles.add_sum(other_doubles);
                *any_double |= other_any;
            }
            (
                Self::Average {
                    integers,
                    doubles,
                    count,
                },
                Self::Average {
                    integers: other_integers,
                    doubles: other_doubles,
                    count: other_count,
                },
            ) => {
                let merged_integers = integers
                    .checked_add(*other_integers)
                    .ok_or(AggregateOverflow::IntegerSum)?;
                *count = count
                    .checked_add(*other_count)
                    .ok_or(AggregateOverflow::Count)?;
                *integers = merged_integers;
                doubles.add_sum(other_doubles);
            }
            _ => {}
        }
        Ok(())
    }

    /// The result: count an integer; sum, min and max an integer when every input was
    /// one, else a double; avg a double. A double is the exact result rounded once to the
    /// nearest double (ties to even); zero is `0.0`.
    pub fn result(&self) -> AggregateValue {
        match self {
            Self::Count(count) => AggregateValue::Integer(i128::from(*count)),
            Self::Sum {
                integers,
                doubles,
                any_double,
            } => {
                if *any_double {
                    let mut total = doubles.clone();
                    total.add_integer(*integers);
                    AggregateValue::Double(total.to_f64())
                } else {
                    AggregateValue::Integer(*integers)
                }
            }
            Self::Extreme {
                greatest,
                integer: integer_extreme,
                double: double_extreme,
            } => match (integer_extreme, double_extreme) {
                (Some(value), None) => AggregateValue::Integer(*value),
                (None, Some(value)) => AggregateValue::Double(*value + 0.0),
                (Some(integer_value), Some(double_value)) => {
                    // Rounding is monotonic, so the extreme of the rounded integer and the
                    // double is the rounded extreme of the exact inputs.
                    #[allow(clippy::cast_precision_loss)]
                    let integer_value = *integer_value as f64 + 0.0;
                    let pick_integer = if *greatest {
                        integer_value > *double_value
                    } else {
                        integer_value < *double_value
                    };
                    AggregateValue::Double(if pick_integer {
                        integer_value
                    } else {
                        *double_value
                    })
                }
                (None, None) => AggregateValue::Null,
            },
            Self::Average {
                integers,
                doubles,
                count,
            } => {
                const EXACT: i128 = 1 << 53;
                if *count == 0 {
                    AggregateValue::Null
                } else if doubles.is_zero() && integers.abs() <= EXACT && *count <= 1 << 53 {
                    // Both exact as doubles: one division rounds once.
                    #[allow(clippy::cast_precision_loss)]
                    let mean = *integers as f64 / *count as f64;
                    AggregateValue::Double(mean + 0.0)
                } else {
                    let mut total = doubles.clone();
                    total.add_integer(*integers);
                    AggregateValue::Double(total.mean(*count))
                }
            }
        }
    }
}

fn double(value: f64) -> Value {
    Number::from_f64(value).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use AggregateFunction::{Avg, Count, Max, Min, Sum};
    use AggregateValue::{Double, Integer};
    use serde_json::json;

    fn run(function: AggregateFunction, inputs: &[Value]) -> AggregateValue {
        let mut accumulator = Accumulator::new(function);
        for input in inputs {
            let number = Number128::of(input);
            accumulator.check(number).unwrap();
            accumulator.add(number);
        }
        accumulator.result()
    }

    fn json_text(value: AggregateValue) -> String {
        let mut out = Vec::new();
        value.write_json(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn computes_each_function() {
        let cases: Vec<(AggregateFunction, Vec<Value>, AggregateValue)> = vec![
            (Count, vec![json!(1), json!("x"), json!(null)], Integer(3)),
            (Sum, vec![json!(1), json!(2)], Integer(3)),
            (Sum, vec![json!(1), json!(2.5)], Double(3.5)),
            (
                Sum,
                vec![json!(u64::MAX), json!(1)],
                Integer(i128::from(u64::MAX) + 1),
            ),
            (Min, vec![json!(3), json!(-2), json!(7)], Integer(-2)),
            (Min, vec![json!(3), json!(2.5)], Double(2.5)),
            (Max, vec![json!(3), json!(2.5)], Double(3.0)),
            (Max, vec![json!(21.0), json!(20.0)], Double(21.0)),
            (Max, vec![json!(-0.0)], Double(0.0)),
            (Avg, vec![json!(100), json!(300)], Double(200.0)),
            (Avg, vec![json!(20.0), json!(21)], Double(20.5)),
        ];
        for (function, inputs, expected) in cases {
            let result = run(function, &inputs);
            assert_eq!(result, expected, "{function:?} of {inputs:?}");
            if let (Double(result), Double(expected)) = (result, expected) {
                assert_eq!(result.to_bits(), expected.to_bits(), "sign of zero");
            }
        }
    }

    #[test]
    fn integers_beyond_64_bits_are_exact() {
        let maximum = json!(i64::MAX);
        let minimum = json!(i64::MIN);
        let cases: Vec<(AggregateFunction, Vec<Value>, &str)> = vec![
            (
                Sum,
                vec![maximum.clone(), maximum.clone()],
                "18446744073709551614",
            ),
            (
                Sum,
                vec![json!(u64::MAX), json!(u64::MAX), json!(u64::MAX)],
                "55340232221128654845",
            ),
            (
                Sum,
                vec![minimum.clone(), minimum.clone()],
                "-18446744073709551616",
            ),
            (
                Avg,
                vec![maximum.clone(), maximum.clone()],
                "9.223372036854776e+18",
            ),
            // The exact mean, 3002399751580331, rounded once (rounding the sum to a
            // double first gave 3002399751580330.5).
            (
                Avg,
                vec![json!(0), json!(0), json!(9_007_199_254_740_993u64)],
                "3002399751580331.0",
            ),
            (
                Max,
                vec![json!(u64::MAX), minimum.clone()],
                "18446744073709551615",
            ),
            (
                Min,
                vec![json!(u64::MAX), minimum.clone()],
                "-9223372036854775808",
            ),
        ];
        for (function, inputs, expected) in cases {
            assert_eq!(
                json_text(run(function, &inputs)),
                expected,
                "{function:?} of {inputs:?}"
            );
        }
        // Stages after the window see the nearest double.
        assert_eq!(
            run(Sum, &[json!(u64::MAX), json!(u64::MAX)]).to_json(),
            json!(3.689_348_814_741_910_3e19)
        );
        assert_eq!(
            run(Sum, &[maximum.clone(), maximum]).to_json(),
            json!(18_446_744_073_709_551_614u64)
        );
    }

    #[test]
    fn refuses_an_input_that_would_overflow() {
        let mut sum = Accumulator::new(Sum);
        sum.add(Some(Number128::Double(1.5e308)));
        assert_eq!(
            sum.check(Some(Number128::Double(0.5e308))),
            Err(AggregateOverflow::DoubleSum)
        );
        assert_eq!(
            sum.check(Some(Number128::Double(-f64::MAX))),
            Ok(()),
            "a negative input takes the sum back"
        );
        assert_eq!(sum.check(Some(Number128::Integer(1))), Ok(()));
        let integers = Accumulator::Sum {
            integers: i128::MAX - 1,
            doubles: ExactSum::default(),
            any_double: false,
        };
        assert_eq!(integers.check(Some(Number128::Integer(1))), Ok(()));
        assert_eq!(
            integers.check(Some(Number128::Integer(2))),
            Err(AggregateOverflow::IntegerSum)
        );
        // The mean of huge doubles never overflows: it is the exact sum divided.
        let mut average = Accumulator::new(Avg);
        for _ in 0..3 {
            let input = Some(Number128::Double(f64::MAX));
            average.check(input).unwrap();
            average.add(input);
        }
        assert_eq!(average.result(), Double(f64::MAX));
    }

    #[test]
    fn sums_doubles_exactly_whatever_the_order() {
        let inputs = [json!(1e16), json!(1.0), json!(1.0), json!(-1e16)];
        let mut reversed = inputs.clone();
        reversed.reverse();
        assert_eq!(run(Sum, &inputs), Double(2.0));
        assert_eq!(run(Sum, &reversed), Double(2.0));
        assert_eq!(run(Avg, &inputs), Double(0.5));
    }

    #[test]
    fn merging_equals_adding_everything_to_one() {
        let inputs = [
            json!(4),
            json!(-1.5),
            json!(9),
            json!(0.1),
            json!(2),
            json!(1e17),
        ];
        for function in [Count, Sum, Min, Max, Avg] {
            let mut left = Accumulator::new(function);
            let mut right = Accumulator::new(function);
            for (index, input) in inputs.iter().enumerate() {
                let target = if index % 2 == 0 {
                    &mut left
                } else {
                    &mut right
                };
                target.add(Number128::of(input));
            }
            left.merge(&right).unwrap();
            assert_eq!(left.result(), run(function, &inputs), "{function:?}");
        }
    }
}
