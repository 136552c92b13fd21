//! Aggregate functions as accumulators: what a window keeps per output, how an input
//! updates it, how two merge (sessions), its result, and its bytes in the state store.
//!
//! Integers are kept exactly (`i128`) apart from doubles, so `sum`, `min` and `max` give
//! an integer when every input was an integer, and a double otherwise; `avg` is always a
//! double.

use serde_json::{Number, Value};
use sluice_crds::pipeline::AggregateFunction;

/// A numeric aggregate input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number128 {
    /// An integer (JSON integers up to `u64::MAX`).
    Integer(i128),
    /// Any other number.
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

    #[allow(clippy::cast_precision_loss)]
    fn as_f64(self) -> f64 {
        match self {
            Self::Integer(integer) => integer as f64,
            Self::Double(double) => double,
        }
    }
}

/// The running state of one aggregate output in one window.
#[derive(Clone, Debug, PartialEq)]
pub enum Accumulator {
    /// Number of events.
    Count(u64),
    /// Sum: integers exactly, doubles apart.
    Sum {
        /// Sum of the integer inputs.
        integers: i128,
        /// Sum of the double inputs.
        doubles: f64,
        /// Whether any input was a double.
        any_double: bool,
    },
    /// Least or greatest input so far.
    Extreme {
        /// `true` for max, `false` for min.
        greatest: bool,
        /// The extreme integer input.
        integer: Option<i128>,
        /// The extreme double input.
        double: Option<f64>,
    },
    /// Mean: sum and count.
    Average {
        /// Sum of the integer inputs.
        integers: i128,
        /// Sum of the double inputs.
        doubles: f64,
        /// Number of inputs.
        count: u64,
    },
}

impl Accumulator {
    /// The empty accumulator of `function`.
    pub fn new(function: AggregateFunction) -> Self {
        match function {
            AggregateFunction::Count => Self::Count(0),
            AggregateFunction::Sum => Self::Sum {
                integers: 0,
                doubles: 0.0,
                any_double: false,
            },
            AggregateFunction::Min | AggregateFunction::Max => Self::Extreme {
                greatest: function == AggregateFunction::Max,
                integer: None,
                double: None,
            },
            AggregateFunction::Avg => Self::Average {
                integers: 0,
                doubles: 0.0,
                count: 0,
            },
        }
    }

    /// Adds one event (`input` is `None` for count).
    pub fn add(&mut self, input: Option<Number128>) {
        match (self, input) {
            (Self::Count(count), _) => *count += 1,
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
                    *doubles += double;
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
                let pick_f64 = |a: f64, b: f64| if greatest { a.max(b) } else { a.min(b) };
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
                        *double = Some(double.map_or(value, |old| pick_f64(old, value)))
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
                    Number128::Double(double) => *doubles += double,
                }
                *count += 1;
            }
            (_, None) => {}
        }
    }

    /// Folds another accumulator of the same function into this one (merging sessions).
    pub fn merge(&mut self, other: &Accumulator) {
        if let (
            Self::Extreme { .. },
            Self::Extreme {
                integer, double, ..
            },
        ) = (&*self, other)
        {
            if let Some(value) = integer {
                self.add(Some(Number128::Integer(*value)));
            }
            if let Some(value) = double {
                self.add(Some(Number128::Double(*value)));
            }
            return;
        }
        match (self, other) {
            (Self::Count(count), Self::Count(other)) => *count += other,
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
                *integers = integers.saturating_add(*other_integers);
                *doubles += other_doubles;
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
                *integers = integers.saturating_add(*other_integers);
                *doubles += other_doubles;
                *count += other_count;
            }
            _ => {}
        }
    }

    /// The result as JSON: count an integer; sum, min and max an integer when every input
    /// was one, else a double; avg a double.
    pub fn result(&self) -> Value {
        match self {
            Self::Count(count) => Value::from(*count),
            Self::Sum {
                integers,
                doubles,
                any_double,
            } => {
                if *any_double {
                    double(Number128::Integer(*integers).as_f64() + doubles)
                } else {
                    integer(*integers)
                }
            }
            Self::Extreme {
                greatest,
                integer: integer_extreme,
                double: double_extreme,
            } => match (integer_extreme, double_extreme) {
                (Some(value), None) => integer(*value),
                (None, Some(value)) => double(*value),
                (Some(integer_value), Some(double_value)) => {
                    let integer_value = Number128::Integer(*integer_value).as_f64();
                    double(if *greatest {
                        integer_value.max(*double_value)
                    } else {
                        integer_value.min(*double_value)
                    })
                }
                (None, None) => Value::Null,
            },
            Self::Average {
                integers,
                doubles,
                count,
            } => {
                if *count == 0 {
                    Value::Null
                } else {
                    #[allow(clippy::cast_precision_loss)]
                    let count = *count as f64;
                    double((Number128::Integer(*integers).as_f64() + doubles) / count)
                }
            }
        }
    }
}

fn integer(value: i128) -> Value {
    if let Ok(small) = i64::try_from(value) {
        Value::from(small)
    } else if let Ok(unsigned) = u64::try_from(value) {
        Value::from(unsigned)
    } else {
        double(Number128::Integer(value).as_f64())
    }
}

fn double(value: f64) -> Value {
    Number::from_f64(value).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use AggregateFunction::{Avg, Count, Max, Min, Sum};
    use serde_json::json;

    fn run(function: AggregateFunction, inputs: &[Value]) -> Value {
        let mut accumulator = Accumulator::new(function);
        for input in inputs {
            accumulator.add(Number128::of(input));
        }
        accumulator.result()
    }

    #[test]
    fn computes_each_function() {
        let cases: Vec<(AggregateFunction, Vec<Value>, Value)> = vec![
            (Count, vec![json!(1), json!("x"), json!(null)], json!(3)),
            (Sum, vec![json!(1), json!(2)], json!(3)),
            (Sum, vec![json!(1), json!(2.5)], json!(3.5)),
            (
                Sum,
                vec![json!(u64::MAX), json!(1)],
                json!(18_446_744_073_709_551_616.0),
            ),
            (Min, vec![json!(3), json!(-2), json!(7)], json!(-2)),
            (Min, vec![json!(3), json!(2.5)], json!(2.5)),
            (Max, vec![json!(3), json!(2.5)], json!(3.0)),
            (Max, vec![json!(21.0), json!(20.0)], json!(21.0)),
            (Avg, vec![json!(100), json!(300)], json!(200.0)),
            (Avg, vec![json!(20.0), json!(21)], json!(20.5)),
        ];
        for (function, inputs, expected) in cases {
            let result = run(function, &inputs);
            assert_eq!(result, expected, "{function:?} of {inputs:?}");
            assert_eq!(
                result.is_f64(),
                expected.is_f64(),
                "{function:?} of {inputs:?}: number kind"
            );
        }
    }

    #[test]
    fn merging_equals_adding_everything_to_one() {
        let inputs = [json!(4), json!(-1.5), json!(9), json!(2)];
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
            left.merge(&right);
            assert_eq!(left.result(), run(function, &inputs), "{function:?}");
        }
    }
}
