//! A gradual type check of the pipeline's CEL expressions, done once at validation.
//!
//! Event fields are JSON of unknown shape, so they are `dyn`: anything goes with them.
//! Everything else has a type (literals, operators, functions), and a call that no
//! overload of the runtime accepts is an error before the job runs, where the runtime
//! would otherwise dead-letter every event: `1 + 'a'`, `size(1)`, `'a'.lowerAscii(1)`,
//! `event.n + 1 > 'x'` (as in cel-go, `dyn + int` is an `int`).
//!
//! The overloads below mirror what the worker's environment
//! ([`crate::expression::environment`]: the `cel` crate's standard library and its strings
//! extension) evaluates; a test runs every one of them, and compares this check's verdict
//! with the runtime's on a table of expressions.

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};

/// The type of an expression, as far as it is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CelType {
    /// Unknown until run time (an event field); as a parameter, any type.
    Dyn,
    Null,
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    List,
    Map,
    Timestamp,
    Duration,
    Type,
}

impl CelType {
    /// The name CEL gives the type.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Dyn => "dyn",
            Self::Null => "null",
            Self::Bool => "bool",
            Self::Int => "int",
            Self::Uint => "uint",
            Self::Double => "double",
            Self::String => "string",
            Self::Bytes => "bytes",
            Self::List => "list",
            Self::Map => "map",
            Self::Timestamp => "timestamp",
            Self::Duration => "duration",
            Self::Type => "type",
        }
    }

    /// Whether a value of this type may be passed where `parameter` is expected.
    fn fits(self, parameter: CelType) -> bool {
        self == Self::Dyn || parameter == Self::Dyn || self == parameter
    }
}

/// One signature of a function or operator: member (`x.f(y)`, the target first) or
/// global (`f(x, y)`).
struct Overload {
    name: &'static str,
    member: bool,
    parameters: &'static [CelType],
    result: CelType,
}

const fn global(name: &'static str, parameters: &'static [CelType], result: CelType) -> Overload {
    Overload {
        name,
        member: false,
        parameters,
        result,
    }
}

const fn member(name: &'static str, parameters: &'static [CelType], result: CelType) -> Overload {
    Overload {
        name,
        member: true,
        parameters,
        result,
    }
}

mod table {
    use super::CelType::{
        Bool, Bytes, Double, Duration, Dyn, Int, List, Map, String, Timestamp, Type, Uint,
    };
    use super::{Overload, global, member};

    /// What the `cel` crate's standard environment evaluates (checked by the tests).
    pub(super) const OVERLOADS: &[Overload] = &[
        // Arithmetic: no implicit conversion between int, uint and double.
        global("_+_", &[Int, Int], Int),
        global("_+_", &[Uint, Uint], Uint),
        global("_+_", &[Double, Double], Double),
        global("_+_", &[String, String], String),
        global("_+_", &[Bytes, Bytes], Bytes),
        global("_+_", &[List, List], List),
        global("_+_", &[Timestamp, Duration], Timestamp),
        global("_+_", &[Duration, Timestamp], Timestamp),
        global("_+_", &[Duration, Duration], Duration),
        global("_-_", &[Int, Int], Int),
        global("_-_", &[Uint, Uint], Uint),
        global("_-_", &[Double, Double], Double),
        global("_-_", &[Timestamp, Timestamp], Duration),
        global("_-_", &[Timestamp, Duration], Timestamp),
        global("_-_", &[Duration, Duration], Duration),
        global("_*_", &[Int, Int], Int),
        global("_*_", &[Uint, Uint], Uint),
        global("_*_", &[Double, Double], Double),
        global("_/_", &[Int, Int], Int),
        global("_/_", &[Uint, Uint], Uint),
        global("_/_", &[Double, Double], Double),
        global("_%_", &[Int, Int], Int),
        global("_%_", &[Uint, Uint], Uint),
        global("-_", &[Int], Int),
        global("-_", &[Double], Double),
        // Ordering: numbers compare across int, uint and double.
        global("_<_", &[Int, Int], Bool),
        global("_<_", &[Int, Uint], Bool),
        global("_<_", &[Int, Double], Bool),
        global("_<_", &[Uint, Int], Bool),
        global("_<_", &[Uint, Uint], Bool),
        global("_<_", &[Uint, Double], Bool),
        global("_<_", &[Double, Int], Bool),
        global("_<_", &[Double, Uint], Bool),
        global("_<_", &[Double, Double], Bool),
        global("_<_", &[String, String], Bool),
        global("_<_", &[Bytes, Bytes], Bool),
        global("_<_", &[Bool, Bool], Bool),
        global("_<_", &[Timestamp, Timestamp], Bool),
        global("_<_", &[Duration, Duration], Bool),
        // (`_<=_`, `_>_` and `_>=_` take the overloads of `_<_`: see `overloads_of`.)
        global("_==_", &[Dyn, Dyn], Bool),
        global("_!=_", &[Dyn, Dyn], Bool),
        global("!_", &[Bool], Bool),
        global("_&&_", &[Bool, Bool], Bool),
        global("_||_", &[Bool, Bool], Bool),
        global("@in", &[Dyn, List], Bool),
        global("@in", &[Dyn, Map], Bool),
        global("_[_]", &[List, Int], Dyn),
        global("_[_]", &[List, Uint], Dyn),
        global("_[_]", &[Map, Dyn], Dyn),
        // Functions.
        global("size", &[String], Int),
        global("size", &[Bytes], Int),
        global("size", &[List], Int),
        global("size", &[Map], Int),
        member("size", &[String], Int),
        member("size", &[Bytes], Int),
        member("size", &[List], Int),
        member("size", &[Map], Int),
        member("contains", &[String, String], Bool),
        member("startsWith", &[String, String], Bool),
        member("endsWith", &[String, String], Bool),
        member("matches", &[String, String], Bool),
        global("matches", &[String, String], Bool),
        global("int", &[Int], Int),
        global("int", &[Uint], Int),
        global("int", &[Double], Int),
        global("int", &[String], Int),
        global("int", &[Timestamp], Int),
        global("uint", &[Int], Uint),
        global("uint", &[Uint], Uint),
        global("uint", &[Double], Uint),
        global("uint", &[String], Uint),
        global("double", &[Int], Double),
        global("double", &[Uint], Double),
        global("double", &[Double], Double),
        global("double", &[String], Double),
        global("string", &[Int], String),
        global("string", &[Uint], String),
        global("string", &[Double], String),
        global("string", &[String], String),
        global("string", &[Bytes], String),
        global("string", &[Bool], String),
        global("string", &[Timestamp], String),
        global("string", &[Duration], String),
        global("bytes", &[String], Bytes),
        global("bytes", &[Bytes], Bytes),
        global("bool", &[Bool], Bool),
        global("bool", &[String], Bool),
        global("dyn", &[Dyn], Dyn),
        global("type", &[Dyn], Type),
        global("timestamp", &[String], Timestamp),
        global("timestamp", &[Timestamp], Timestamp),
        global("duration", &[String], Duration),
        global("duration", &[Duration], Duration),
        member("getFullYear", &[Timestamp], Int),
        member("getFullYear", &[Timestamp, String], Int),
        member("getMonth", &[Timestamp], Int),
        member("getMonth", &[Timestamp, String], Int),
        member("getDayOfYear", &[Timestamp], Int),
        member("getDayOfYear", &[Timestamp, String], Int),
        member("getDayOfMonth", &[Timestamp], Int),
        member("getDayOfMonth", &[Timestamp, String], Int),
        member("getDate", &[Timestamp], Int),
        member("getDate", &[Timestamp, String], Int),
        member("getDayOfWeek", &[Timestamp], Int),
        member("getDayOfWeek", &[Timestamp, String], Int),
        member("getHours", &[Timestamp], Int),
        member("getHours", &[Timestamp, String], Int),
        member("getHours", &[Duration], Int),
        member("getMinutes", &[Timestamp], Int),
        member("getMinutes", &[Timestamp, String], Int),
        member("getMinutes", &[Duration], Int),
        member("getSeconds", &[Timestamp], Int),
        member("getSeconds", &[Timestamp, String], Int),
        member("getSeconds", &[Duration], Int),
        member("getMilliseconds", &[Timestamp], Int),
        member("getMilliseconds", &[Timestamp, String], Int),
        member("getMilliseconds", &[Duration], Int),
        // The strings extension (cel-go's `ext.Strings`, as Kubernetes enables it).
        // Indexes count code points; an index out of range is an error.
        member("charAt", &[String, Int], String),
        member("indexOf", &[String, String], Int),
        member("indexOf", &[String, String, Int], Int),
        member("lastIndexOf", &[String, String], Int),
        member("lastIndexOf", &[String, String, Int], Int),
        member("join", &[List], String),
        member("join", &[List, String], String),
        member("lowerAscii", &[String], String),
        member("upperAscii", &[String], String),
        member("replace", &[String, String, String], String),
        member("replace", &[String, String, String, Int], String),
        member("split", &[String, String], List),
        member("split", &[String, String, Int], List),
        member("substring", &[String, Int], String),
        member("substring", &[String, Int, Int], String),
        member("trim", &[String], String),
    ];
}

use table::OVERLOADS;

/// The overloads of a function or operator (the ordering operators share theirs).
fn overloads_of(name: &str) -> impl Iterator<Item = &'static Overload> + '_ {
    let name = match name {
        "_<=_" | "_>_" | "_>=_" => "_<_",
        other => other,
    };
    OVERLOADS
        .iter()
        .filter(move |overload| overload.name == name)
}

/// The functions an expression may call, for messages.
pub(crate) fn function_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = OVERLOADS
        .iter()
        .map(|overload| overload.name)
        .filter(|name| name.chars().next().is_some_and(char::is_alphabetic))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The operator as written, for messages: `_+_` is `+`.
fn operator_text(name: &str) -> &str {
    match name {
        "@in" => "in",
        "_[_]" => "[]",
        "-_" => "unary -",
        "!_" => "!",
        _ => name.trim_matches('_'),
    }
}

/// Infers the type of `expression`; `bound` holds the variables a macro (`exists`, `map`,
/// ...) binds and their types. The first type error found is returned, as a sentence.
pub(crate) fn infer(
    expression: &IdedExpr,
    bound: &mut Vec<(String, CelType)>,
) -> Result<CelType, String> {
    match &expression.expr {
        Expr::Unspecified => Ok(CelType::Dyn),
        Expr::Literal(literal) => Ok(match literal {
            LiteralValue::Boolean(_) => CelType::Bool,
            LiteralValue::Bytes(_) => CelType::Bytes,
            LiteralValue::Double(_) => CelType::Double,
            LiteralValue::Int(_) => CelType::Int,
            LiteralValue::Null => CelType::Null,
            LiteralValue::String(_) => CelType::String,
            LiteralValue::UInt(_) => CelType::Uint,
        }),
        Expr::Ident(name) => Ok(bound
            .iter()
            .rev()
            .find(|(variable, _)| variable == name)
            .map_or(
                if name == "event" {
                    CelType::Map
                } else {
                    CelType::Dyn
                },
                |(_, kind)| *kind,
            )),
        Expr::Select(select) => {
            let operand = infer(&select.operand, bound)?;
            if !matches!(operand, CelType::Dyn | CelType::Map) {
                return Err(format!(
                    "a value of type {} has no fields: .{} needs a map (such as event)",
                    operand.name(),
                    select.field
                ));
            }
            Ok(if select.test {
                CelType::Bool
            } else {
                CelType::Dyn
            })
        }
        Expr::List(list) => {
            for element in &list.elements {
                infer(element, bound)?;
            }
            Ok(CelType::List)
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                if let EntryExpr::MapEntry(entry) = &entry.expr {
                    infer(&entry.key, bound)?;
                    infer(&entry.value, bound)?;
                }
            }
            Ok(CelType::Map)
        }
        Expr::Struct(_) => Ok(CelType::Dyn),
        Expr::Comprehension(comprehension) => {
            let range = infer(&comprehension.iter_range, bound)?;
            if !matches!(range, CelType::Dyn | CelType::List | CelType::Map) {
                return Err(format!(
                    "a {} cannot be iterated: macros such as exists and map need a list or a map",
                    range.name()
                ));
            }
            let accumulator = infer(&comprehension.accu_init, bound)?;
            let depth = bound.len();
            bound.push((comprehension.iter_var.clone(), CelType::Dyn));
            if let Some(second) = &comprehension.iter_var2 {
                bound.push((second.clone(), CelType::Dyn));
            }
            bound.push((comprehension.accu_var.clone(), accumulator));
            let checked = infer(&comprehension.loop_cond, bound)
                .and_then(|_| infer(&comprehension.loop_step, bound))
                .and_then(|_| infer(&comprehension.result, bound));
            bound.truncate(depth);
            checked
        }
        Expr::Call(call) => {
            let mut arguments = Vec::with_capacity(call.args.len() + 1);
            if let Some(target) = &call.target {
                arguments.push(infer(target, bound)?);
            }
            for argument in &call.args {
                arguments.push(infer(argument, bound)?);
            }
            let name = call.func_name.as_str();
            if name == "_?_:_" {
                return conditional(&arguments);
            }
            if name.starts_with('@') && name != "@in" {
                // Internal functions of the macros (`@not_strictly_false`).
                return Ok(CelType::Dyn);
            }
            resolve(name, call.target.is_some(), &arguments)
        }
    }
}

fn conditional(arguments: &[CelType]) -> Result<CelType, String> {
    let [condition, when_true, when_false] = arguments else {
        return Ok(CelType::Dyn);
    };
    if !condition.fits(CelType::Bool) {
        return Err(format!(
            "the condition of ? : must be a bool, not a {}",
            condition.name()
        ));
    }
    Ok(if when_true == when_false {
        *when_true
    } else {
        CelType::Dyn
    })
}

/// The result type of a call, from the overloads its argument types fit.
fn resolve(name: &str, member_call: bool, arguments: &[CelType]) -> Result<CelType, String> {
    let mut declared = false;
    let mut result: Option<CelType> = None;
    for overload in overloads_of(name) {
        declared = true;
        if overload.member != member_call
            || overload.parameters.len() != arguments.len()
            || !arguments
                .iter()
                .zip(overload.parameters)
                .all(|(argument, parameter)| argument.fits(*parameter))
        {
            continue;
        }
        result = Some(match result {
            None => overload.result,
            Some(previous) if previous == overload.result => previous,
            Some(_) => CelType::Dyn,
        });
    }
    let types: Vec<&str> = arguments.iter().map(|kind| kind.name()).collect();
    match result {
        Some(result) => Ok(result),
        None if !declared => Err(format!(
            "calls {name}(), which is not a function here; the functions are {}",
            function_names().join(", ")
        )),
        None if name.starts_with('_')
            || name.starts_with('-')
            || name.starts_with('!')
            || name == "@in" =>
        {
            Err(format!(
                "applies {} to {}, which it does not take: convert one side, for example with int(), double() or string()",
                operator_text(name),
                types.join(" and ")
            ))
        }
        None => {
            let (target, rest) = if member_call {
                (Some(types[0]), &types[1..])
            } else {
                (None, &types[..])
            };
            let taken: Vec<String> = overloads_of(name)
                .map(|overload| {
                    let names: Vec<&str> =
                        overload.parameters.iter().map(|kind| kind.name()).collect();
                    if overload.member {
                        format!("{}.{name}({})", names[0], names[1..].join(", "))
                    } else {
                        format!("{name}({})", names.join(", "))
                    }
                })
                .collect();
            Err(format!(
                "calls {}{name}({}), which does not exist; {name} takes {}",
                target
                    .map(|target| format!("{target}."))
                    .unwrap_or_default(),
                rest.join(", "),
                taken.join(" or ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CelType::{
        Bool, Bytes, Double, Duration, Dyn, Int, List, Map, Null, Timestamp, Type, Uint,
    };

    fn check(source: &str) -> Result<CelType, String> {
        let program = cel::Program::compile(source).expect("parses");
        infer(program.expression(), &mut Vec::new())
    }

    /// A value of each type, as CEL source, to call every overload with.
    fn sample(kind: CelType) -> &'static str {
        match kind {
            Dyn => "1",
            Null => "null",
            Bool => "true",
            Int => "2",
            Uint => "2u",
            Double => "2.5",
            CelType::String => "'7'",
            Bytes => "b'ab'",
            List => "[1, 2]",
            Map => "{'a': 1}",
            Timestamp => "timestamp('2026-11-27T10:00:00Z')",
            Duration => "duration('90s')",
            Type => "type(1)",
        }
    }

    fn runtime_type(value: &cel::Value) -> CelType {
        match value {
            cel::Value::Null => Null,
            cel::Value::Bool(_) => Bool,
            cel::Value::Int(_) => Int,
            cel::Value::UInt(_) => Uint,
            cel::Value::Float(_) => Double,
            cel::Value::String(_) => CelType::String,
            cel::Value::Bytes(_) => Bytes,
            cel::Value::List(_) => List,
            cel::Value::Map(_) => Map,
            cel::Value::Timestamp(_) => Timestamp,
            cel::Value::Duration(_) => Duration,
            _ => Dyn,
        }
    }

    /// Every overload declared here exists in the runtime and gives its result type:
    /// the table cannot claim what the `cel` crate does not do.
    #[test]
    fn every_overload_runs_in_the_runtime_with_its_result_type() {
        let context = crate::expression::context();
        for overload in OVERLOADS {
            let arguments: Vec<&str> = overload
                .parameters
                .iter()
                .map(|kind| sample(*kind))
                .collect();
            let mut arguments = arguments;
            // Strings some functions parse: give them ones that parse.
            let parsed = match overload.name {
                "timestamp" => Some("'2026-11-27T10:00:00Z'"),
                "duration" => Some("'90s'"),
                "bool" => Some("'true'"),
                name if name.starts_with("get") => Some("'UTC'"),
                _ => None,
            };
            if let Some(parsed) = parsed {
                for argument in arguments.iter_mut().skip(usize::from(overload.member)) {
                    if *argument == "'7'" {
                        *argument = parsed;
                    }
                }
            }
            // Indexes within the one-character sample string; a list of strings to join.
            match overload.name {
                "charAt" | "indexOf" | "lastIndexOf" | "substring" => {
                    for argument in arguments.iter_mut().skip(1) {
                        if *argument == "2" {
                            *argument = "0";
                        }
                    }
                }
                "join" => arguments[0] = "['a', 'b']",
                _ => {}
            }
            let source = match (overload.name, overload.member) {
                ("_[_]", _) => match overload.parameters[1] {
                    Int => "[1, 2][0]".to_string(),
                    Uint => "[1, 2][0u]".to_string(),
                    _ => "{'a': 1}['a']".to_string(),
                },
                ("@in", _) => format!("{} in {}", arguments[0], arguments[1]),
                ("-_", _) => format!("-({})", arguments[0]),
                ("!_", _) => format!("!({})", arguments[0]),
                (name, _) if name.starts_with('_') => {
                    let operator = operator_text(name);
                    // Keep subtraction of uints from going negative.
                    let (left, right) = if operator == "-" && arguments[0] == "2u" {
                        ("3u", arguments[1])
                    } else {
                        (arguments[0], arguments[1])
                    };
                    format!("({left}) {operator} ({right})")
                }
                (name, true) => format!("({}).{name}({})", arguments[0], arguments[1..].join(", ")),
                (name, false) => format!("{name}({})", arguments.join(", ")),
            };
            let value = cel::Program::compile(&source)
                .unwrap_or_else(|error| panic!("{source}: {error}"))
                .execute(&context)
                .unwrap_or_else(|error| panic!("{source}: {error:?}"));
            if overload.result != Dyn && overload.result != Type {
                assert_eq!(
                    runtime_type(&value),
                    overload.result,
                    "{source} gave {value:?}"
                );
            }
            assert_eq!(check(&source), Ok(overload.result), "{source}");
        }
    }

    /// The check and the runtime agree on which expressions cannot work: every one the
    /// check refuses fails at run time, and every one it accepts runs.
    #[test]
    fn the_check_refuses_exactly_what_the_runtime_cannot_evaluate() {
        let context = crate::expression::context();
        let cases = [
            "1 + 2.0",
            "1 + 2u",
            "1 - 2u",
            "1.0 / 2",
            "'a' + 1",
            "'a' * 2",
            "null + 1",
            "1.5 % 1.0",
            "-'a'",
            "!1",
            "1 && true",
            "'a' < 1",
            "size(1)",
            "size('a', 2)",
            "nosuch(1)",
            "'a'.nosuch()",
            "lowerAscii('A')",
            "'A'.lowerAscii(1)",
            "' a '.trim(' ')",
            "'a,b'.split(1)",
            "'a'.replace('a')",
            "'abc'.substring('1')",
            "(1).join()",
            "'abc'.charAt(1u)",
            "max(1, 2)",
            "math.abs(-1)",
            "'abc'[0]",
            "[1, 2]['a']",
            "1 in 1",
            "(1).x",
            "1 ? 2 : 3",
            "[1, 2].exists(x, x + 1)",
            "(1).exists(x, true)",
            "(1 + 1) + 0.5",
            "size('ab') > 'x'",
            // accepted
            "1 < 2.0",
            "1 < 2u",
            "2.5 >= 1",
            "1 == 1.0",
            "1 == 'a'",
            "true < false",
            "[1] + [2]",
            "{'a': 1}['a']",
            "{'a': 1}.a",
            "has({'a': 1}.a)",
            "5 % 2",
            "'abc'.contains('b')",
            "matches('abc', 'b')",
            "[1, 2].exists(x, x > 1)",
            "[1, 2].all(x, x > 0)",
            "[1, 2].exists_one(x, x > 1)",
            "[1, 2].map(x, x * 2)",
            "[1, 2].filter(x, x > 1)",
            "{'a': 1}.exists(key, key == 'a')",
            "true ? 1 : 'a'",
            "timestamp('2026-11-27T10:00:00Z') + duration('1s') > timestamp('2026-11-27T10:00:00Z')",
            "timestamp('2026-11-27T10:00:00Z').getHours('Europe/Paris')",
            "null == null",
            "dyn(1) + 1",
            "int('3') + 1",
            "string(1) + 'a'",
            "'A'.lowerAscii()",
            "' a '.trim()",
            "'/a?b'.split('?')[0] + '/'",
            "'a,b,c'.split(',', 2).size() == 2",
            "'aXa'.replace('a', 'b') + 'c'",
            "'aXa'.replace('a', 'b', 1).upperAscii()",
            "'héllo'.substring(1) + 'x'",
            "'héllo'.substring(1, 2).size()",
            "['a', 'b'].join() + ['a', 'b'].join('-')",
            "'abc'.indexOf('b') + 'abc'.lastIndexOf('b', 2)",
            "'abc'.charAt(0) == 'a'",
        ];
        for source in cases {
            let verdict = check(source);
            let runtime = cel::Program::compile(source).unwrap().execute(&context);
            assert_eq!(
                verdict.is_err(),
                runtime.is_err(),
                "{source}: check {verdict:?}, runtime {runtime:?}"
            );
        }
    }

    #[test]
    fn event_fields_are_dyn_and_narrow_through_operators() {
        let cases: &[(&str, Result<CelType, &str>)] = &[
            ("event.status == 200", Ok(Bool)),
            ("event.a + event.b", Ok(Dyn)),
            ("event.n + 1", Ok(Int)),
            ("event.n + 1.5", Ok(Double)),
            ("event.url", Ok(Dyn)),
            ("size(event.url)", Ok(Int)),
            ("event.url.startsWith('/')", Ok(Bool)),
            ("event['user-id']", Ok(Dyn)),
            ("event.tags.exists(tag, tag == 'x')", Ok(Bool)),
            ("event.n + 1 > 'x'", Err("applies > to int and string")),
            ("event.url.lowerAscii()", Ok(CelType::String)),
            ("event.url.split('?')[0]", Ok(Dyn)),
            ("event.url.split('?').size() > 1", Ok(Bool)),
            (
                "event.url.lowerAscii(1)",
                Err(
                    "calls dyn.lowerAscii(int), which does not exist; lowerAscii takes string.lowerAscii()",
                ),
            ),
            (
                "event.tags.join(1)",
                Err(
                    "calls dyn.join(int), which does not exist; join takes list.join() or list.join(string)",
                ),
            ),
            (
                "size(event.a, 3)",
                Err(
                    "calls size(dyn, int), which does not exist; size takes size(string) or size(bytes) or size(list) or size(map)",
                ),
            ),
            (
                "1 + 'a'",
                Err("applies + to int and string, which it does not take"),
            ),
            (
                "event.n.size(1)",
                Err("calls dyn.size(int), which does not exist"),
            ),
            (
                "(event.a + 1).b",
                Err("a value of type int has no fields: .b needs a map"),
            ),
        ];
        for (source, expected) in cases {
            match (check(source), expected) {
                (Ok(actual), Ok(expected)) => assert_eq!(actual, *expected, "{source}"),
                (Err(actual), Err(expected)) => {
                    assert!(actual.contains(expected), "{source}: {actual}")
                }
                (actual, expected) => panic!("{source}: {actual:?}, expected {expected:?}"),
            }
        }
    }
}
