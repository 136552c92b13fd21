//! A pipeline expression compiled once: a native fast path for the commonest shapes
//! (`event.field`, `event.field <op> literal`), CEL for everything else.
//!
//! CEL programs are parsed once and evaluated against one `cel::Context` per expression,
//! reused for every event; only the fields the expression reads are converted to CEL
//! values (see `docs/worker.md`). The fast path implements CEL's own semantics for its
//! shapes (numeric comparison across int, uint and double; equality of different types
//! is false; ordering of different types is an error); a test compares it with CEL on a
//! table of expressions and events (each kind of number, strings, bools, null, lists,
//! maps, missing fields).

use std::borrow::Cow;
use std::cmp::Ordering;

use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use serde_json::{Map, Value};
use sluice_crds::pipeline::Expression;

use super::value::{cel_to_json, object_to_cel};

/// The stack of the thread that evaluates expressions in Kafka mode. Validation lets no
/// expression nest deeper than `sluice_crds::expression::MAX_EXPRESSION_DEPTH`, and the
/// deepest of every shape parses and evaluates on a 2 MiB thread (tested here and in the
/// API crate); 16 MiB leaves room for everything else the engine puts on the stack.
pub const EVALUATION_STACK_BYTES: usize = 16 << 20;

/// Why an expression failed on an event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("failed to evaluate {expression:?}: {message}")]
pub struct EvaluationError {
    /// The expression as written.
    pub expression: String,
    /// What went wrong.
    pub message: String,
}

/// A comparison operator of the fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOperator {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `<`
    Less,
    /// `<=`
    LessOrEqual,
    /// `>`
    Greater,
    /// `>=`
    GreaterOrEqual,
}

impl CompareOperator {
    fn from_function(name: &str) -> Option<Self> {
        Some(match name {
            "_==_" => Self::Equal,
            "_!=_" => Self::NotEqual,
            "_<_" => Self::Less,
            "_<=_" => Self::LessOrEqual,
            "_>_" => Self::Greater,
            "_>=_" => Self::GreaterOrEqual,
            _ => return None,
        })
    }

    /// The operator with its operands swapped (`a < b` is `b > a`).
    fn swapped(self) -> Self {
        match self {
            Self::Less => Self::Greater,
            Self::LessOrEqual => Self::GreaterOrEqual,
            Self::Greater => Self::Less,
            Self::GreaterOrEqual => Self::LessOrEqual,
            other => other,
        }
    }

    /// The CEL symbol, for messages.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Equal => "==",
            Self::NotEqual => "!=",
            Self::Less => "<",
            Self::LessOrEqual => "<=",
            Self::Greater => ">",
            Self::GreaterOrEqual => ">=",
        }
    }
}

/// A literal of the fast path.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// An `int`.
    Int(i64),
    /// A `uint`.
    UInt(u64),
    /// A `double`.
    Double(f64),
    /// A `string`.
    String(String),
    /// A `bool`.
    Bool(bool),
}

/// How an expression is evaluated.
enum Evaluator {
    /// A literal such as `true`.
    Constant(Value),
    /// `event.field`
    Field(String),
    /// `event.field <op> literal` (a literal on the left is swapped to the right).
    Compare {
        field: String,
        operator: CompareOperator,
        literal: Literal,
    },
    /// Anything else, by CEL.
    Cel(Box<CelProgram>),
}

struct CelProgram {
    program: cel::Program,
    context: cel::Context<'static, 'static>,
    /// The fields to pass, or `None` for the whole event.
    fields: Option<Vec<String>>,
}

/// An expression ready to evaluate on events.
pub struct CompiledExpression {
    source: String,
    evaluator: Evaluator,
}

impl std::fmt::Debug for CompiledExpression {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = match self.evaluator {
            Evaluator::Constant(_) | Evaluator::Field(_) | Evaluator::Compare { .. } => "native",
            Evaluator::Cel(_) => "cel",
        };
        write!(formatter, "{:?} ({path})", self.source)
    }
}

/// Why an expression could not be compiled (the validation that produced it parsed it,
/// so this means a bug or a mismatch of CEL versions).
#[derive(Debug, thiserror::Error)]
#[error("failed to compile the CEL expression {expression:?}: {message}")]
pub struct CompileError {
    expression: String,
    message: String,
}

impl CompiledExpression {
    /// Compiles a checked expression, with the native fast path where it applies.
    pub fn compile(expression: &Expression) -> Result<Self, CompileError> {
        Self::compile_with(expression, true)
    }

    /// Compiles with CEL only (for the tests that compare both paths).
    pub fn compile_cel_only(expression: &Expression) -> Result<Self, CompileError> {
        Self::compile_with(expression, false)
    }

    fn compile_with(expression: &Expression, native: bool) -> Result<Self, CompileError> {
        let program =
            sluice_crds::expression::parse(&expression.source).map_err(|error| CompileError {
                expression: expression.source.clone(),
                message: error.to_string(),
            })?;
        let evaluator = match native.then(|| native_form(program.expression())).flatten() {
            Some(evaluator) => evaluator,
            None => Evaluator::Cel(Box::new(CelProgram {
                program,
                context: sluice_crds::expression::context(),
                fields: expression
                    .event_fields
                    .as_ref()
                    .map(|fields| fields.iter().cloned().collect()),
            })),
        };
        Ok(Self {
            source: expression.source.clone(),
            evaluator,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The field it reads when it is nothing but `event.<field>`.
    pub fn field_name(&self) -> Option<&str> {
        match &self.evaluator {
            Evaluator::Field(field) => Some(field),
            _ => None,
        }
    }

    /// Whether the native fast path evaluates it.
    pub fn is_native(&self) -> bool {
        !matches!(self.evaluator, Evaluator::Cel(_))
    }

    /// The value of the expression on `event`.
    pub fn evaluate<'e>(
        &mut self,
        event: &'e Map<String, Value>,
    ) -> Result<Cow<'e, Value>, EvaluationError> {
        let error = |message: String| EvaluationError {
            expression: self.source.clone(),
            message,
        };
        match &mut self.evaluator {
            Evaluator::Constant(value) => Ok(Cow::Owned(value.clone())),
            Evaluator::Field(field) => event
                .get(field.as_str())
                .map(Cow::Borrowed)
                .ok_or_else(|| error(format!("No such key: {field}"))),
            Evaluator::Compare {
                field,
                operator,
                literal,
            } => {
                let value = event
                    .get(field.as_str())
                    .ok_or_else(|| error(format!("No such key: {field}")))?;
                compare(value, *operator, literal)
                    .map(|result| Cow::Owned(Value::Bool(result)))
                    .map_err(error)
            }
            Evaluator::Cel(cel) => {
                let event_value = match &cel.fields {
                    Some(fields) => object_to_cel(
                        fields
                            .iter()
                            .filter_map(|name| event.get_key_value(name.as_str())),
                    ),
                    None => object_to_cel(event.iter()),
                };
                cel.context.add_variable_from_value("event", event_value);
                let result = cel.program.execute(&cel.context);
                let result = result.map_err(|failure| error(failure.to_string()))?;
                cel_to_json(&result)
                    .map(Cow::Owned)
                    .map_err(|failure| error(failure.to_string()))
            }
        }
    }
}

/// The native form of an expression, when it has one.
fn native_form(expression: &IdedExpr) -> Option<Evaluator> {
    if let Expr::Literal(LiteralValue::Boolean(boolean)) = &expression.expr {
        return Some(Evaluator::Constant(Value::Bool(*boolean.inner())));
    }
    if let Some(field) = event_field(expression) {
        return Some(Evaluator::Field(field));
    }
    let Expr::Call(call) = &expression.expr else {
        return None;
    };
    let operator = CompareOperator::from_function(&call.func_name)?;
    if call.target.is_some() {
        return None;
    }
    let [left, right] = call.args.as_slice() else {
        return None;
    };
    if let (Some(field), Some(literal)) = (event_field(left), literal(right)) {
        return Some(Evaluator::Compare {
            field,
            operator,
            literal,
        });
    }
    if let (Some(literal), Some(field)) = (literal(left), event_field(right)) {
        return Some(Evaluator::Compare {
            field,
            operator: operator.swapped(),
            literal,
        });
    }
    None
}

/// `event.field` or `event['field']`.
fn event_field(expression: &IdedExpr) -> Option<String> {
    match &expression.expr {
        Expr::Select(select) if !select.test => match &select.operand.expr {
            Expr::Ident(name) if name == "event" => Some(select.field.clone()),
            _ => None,
        },
        Expr::Call(call) if call.func_name == "_[_]" && call.target.is_none() => {
            match call.args.as_slice() {
                [
                    IdedExpr {
                        expr: Expr::Ident(name),
                        ..
                    },
                    IdedExpr {
                        expr: Expr::Literal(LiteralValue::String(key)),
                        ..
                    },
                ] if name == "event" => Some(key.inner().to_string()),
                _ => None,
            }
        }
        _ => None,
    }
}

fn literal(expression: &IdedExpr) -> Option<Literal> {
    let Expr::Literal(value) = &expression.expr else {
        return None;
    };
    Some(match value {
        LiteralValue::Int(integer) => Literal::Int(*integer.inner()),
        LiteralValue::UInt(unsigned) => Literal::UInt(*unsigned.inner()),
        LiteralValue::Double(double) => Literal::Double(*double.inner()),
        LiteralValue::String(text) => Literal::String(text.inner().to_string()),
        LiteralValue::Boolean(boolean) => Literal::Bool(*boolean.inner()),
        LiteralValue::Null | LiteralValue::Bytes(_) => return None,
    })
}

/// A JSON value as CEL sees it, for comparisons.
enum Operand<'a> {
    Int(i64),
    UInt(u64),
    Double(f64),
    String(&'a str),
    Bool(bool),
    /// null, lists and maps: equal to no literal, ordered against none.
    Other(&'static str),
}

fn operand(value: &Value) -> Operand<'_> {
    match value {
        Value::Number(number) => {
            if let Some(integer) = number.as_i64() {
                Operand::Int(integer)
            } else if let Some(unsigned) = number.as_u64() {
                Operand::UInt(unsigned)
            } else {
                Operand::Double(number.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(text) => Operand::String(text),
        Value::Bool(boolean) => Operand::Bool(*boolean),
        Value::Null => Operand::Other("null_type"),
        Value::Array(_) => Operand::Other("list"),
        Value::Object(_) => Operand::Other("map"),
    }
}

fn literal_operand(literal: &Literal) -> Operand<'_> {
    match literal {
        Literal::Int(integer) => Operand::Int(*integer),
        Literal::UInt(unsigned) => Operand::UInt(*unsigned),
        Literal::Double(double) => Operand::Double(*double),
        Literal::String(text) => Operand::String(text),
        Literal::Bool(boolean) => Operand::Bool(*boolean),
    }
}

fn type_name(operand: &Operand<'_>) -> &'static str {
    match operand {
        Operand::Int(_) => "int",
        Operand::UInt(_) => "uint",
        Operand::Double(_) => "double",
        Operand::String(_) => "string",
        Operand::Bool(_) => "bool",
        Operand::Other(name) => name,
    }
}

/// CEL's ordering of two values, `None` when they are not comparable.
fn cel_ordering(left: &Operand<'_>, right: &Operand<'_>) -> Option<Ordering> {
    match (left, right) {
        (Operand::Int(a), Operand::Int(b)) => Some(a.cmp(b)),
        (Operand::UInt(a), Operand::UInt(b)) => Some(a.cmp(b)),
        (Operand::Int(a), Operand::UInt(b)) => {
            Some(u64::try_from(*a).map_or(Ordering::Less, |a| a.cmp(b)))
        }
        (Operand::UInt(a), Operand::Int(b)) => {
            Some(i64::try_from(*a).map_or(Ordering::Greater, |a| a.cmp(b)))
        }
        (Operand::Double(a), Operand::Double(b)) => a.partial_cmp(b),
        #[allow(clippy::cast_precision_loss)]
        (Operand::Int(a), Operand::Double(b)) => (*a as f64).partial_cmp(b),
        #[allow(clippy::cast_precision_loss)]
        (Operand::UInt(a), Operand::Double(b)) => (*a as f64).partial_cmp(b),
        #[allow(clippy::cast_precision_loss)]
        (Operand::Double(a), Operand::Int(b)) => a.partial_cmp(&(*b as f64)),
        #[allow(clippy::cast_precision_loss)]
        (Operand::Double(a), Operand::UInt(b)) => a.partial_cmp(&(*b as f64)),
        (Operand::String(a), Operand::String(b)) => Some(a.cmp(b)),
        (Operand::Bool(a), Operand::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// `value <operator> literal` with CEL's semantics.
pub fn compare(
    value: &Value,
    operator: CompareOperator,
    literal: &Literal,
) -> Result<bool, String> {
    let left = operand(value);
    let right = literal_operand(literal);
    let ordering = cel_ordering(&left, &right);
    let result = match operator {
        CompareOperator::Equal => ordering == Some(Ordering::Equal),
        CompareOperator::NotEqual => ordering != Some(Ordering::Equal),
        _ => {
            let ordering = ordering.ok_or_else(|| {
                format!(
                    "no such overload: {} {} {}",
                    type_name(&left),
                    operator.symbol(),
                    type_name(&right)
                )
            })?;
            match operator {
                CompareOperator::Less => ordering == Ordering::Less,
                CompareOperator::LessOrEqual => ordering != Ordering::Greater,
                CompareOperator::Greater => ordering == Ordering::Greater,
                _ => ordering != Ordering::Less,
            }
        }
    };
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expression(source: &str) -> Expression {
        let (_, checked) =
            sluice_crds::load_manifest(&crate::testing::manifest_with_filter(source)).unwrap();
        match &checked.pipeline.before_key[0] {
            sluice_crds::pipeline::StatelessStep::Filter(expression) => expression.clone(),
            other => panic!("unexpected step {other:?}"),
        }
    }

    #[test]
    fn recognises_the_native_shapes() {
        let cases = [
            ("event.status", true),
            ("event['status']", true),
            ("event.status == 200", true),
            ("200 == event.status", true),
            ("event.temperature < 150.0", true),
            ("event.url != '/home'", true),
            ("event.ok == true", true),
            ("false", true),
            ("event.a.b == 1", false),
            ("has(event.status)", false),
            ("event.status == null", false),
            ("event.status == 200 && event.url == '/'", false),
            ("size(event.url) > 3", false),
        ];
        for (source, native) in cases {
            let compiled = CompiledExpression::compile(&expression(source)).unwrap();
            assert_eq!(compiled.is_native(), native, "{source}");
        }
    }

    #[test]
    fn native_and_cel_agree_on_examples() {
        let events = [
            json!({"status": 200, "url": "/home", "temperature": 20.5, "ok": true}),
            json!({"status": 200.0, "url": 3, "temperature": "n/a", "ok": null}),
            json!({"status": u64::MAX, "url": ["/"], "temperature": -1, "ok": {"a": 1}}),
            json!({}),
        ];
        let sources = [
            "event.status",
            "event.status == 200",
            "200 == event.status",
            "event.status >= 200",
            "event.temperature < 150.0",
            "150.0 > event.temperature",
            "event.url != '/home'",
            "event.url < 'b'",
            "event.ok == true",
            "event.ok > false",
            "event.status == 200u",
            "true",
        ];
        for source in sources {
            let expression = expression(source);
            let mut native = CompiledExpression::compile(&expression).unwrap();
            let mut cel = CompiledExpression::compile_cel_only(&expression).unwrap();
            for event in &events {
                let event = event.as_object().unwrap();
                let native_result = native.evaluate(event).map(Cow::into_owned);
                let cel_result = cel.evaluate(event).map(Cow::into_owned);
                assert_eq!(
                    native_result.is_ok(),
                    cel_result.is_ok(),
                    "{source} on {event:?}: {native_result:?} vs {cel_result:?}"
                );
                if let (Ok(native_value), Ok(cel_value)) = (native_result, cel_result) {
                    assert_eq!(native_value, cel_value, "{source} on {event:?}");
                }
            }
        }
    }

    /// Filters of each shape that nests, `size` units deep.
    fn deep_filter(shape: &str, size: usize) -> String {
        match shape {
            "sum" => format!("{} > 0", vec!["1"; size].join(" + ")),
            "or" => vec!["event.a == 1"; size].join(" || "),
            "parentheses" => format!("{}true{}", "(".repeat(size), ")".repeat(size)),
            "calls" => format!("{}1{} > 0", "int(".repeat(size), ")".repeat(size)),
            "lists" => format!("size({}1{}) > 0", "[".repeat(size), "]".repeat(size)),
            "maps" => format!("size({}1{}) > 0", "{'a': ".repeat(size), "}".repeat(size)),
            "fields" => format!("has(event{})", ".a".repeat(size)),
            "indexes" => format!("event.a{} == 1", "[0]".repeat(size)),
            "methods" => format!("event.s{} == 'a'", ".trim()".repeat(size)),
            "conditionals" => format!("{}true", "false ? false : ".repeat(size)),
            "comprehensions" => format!("{}true{}", "[1].all(x, ".repeat(size), ")".repeat(size)),
            _ => unreachable!("no shape {shape}"),
        }
    }

    /// The deepest filter of each shape that validation accepts is compiled and evaluated
    /// by the worker on a thread with the stack of a tokio worker thread (2 MiB), where a
    /// chain of 1,500 additions used to overflow it.
    #[test]
    fn the_deepest_expressions_validation_allows_run_on_a_two_mebibyte_stack() {
        let shapes = [
            "sum",
            "or",
            "parentheses",
            "calls",
            "lists",
            "maps",
            "fields",
            "indexes",
            "methods",
            "conditionals",
            "comprehensions",
        ];
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let valid = |source: &str| {
                    sluice_crds::load_manifest(&crate::testing::manifest_with_filter(source))
                        .is_ok()
                };
                for shape in shapes {
                    let mut size = 1;
                    while valid(&deep_filter(shape, size + 1)) {
                        size += 1;
                    }
                    assert!(size >= 8, "{shape}: only {size} levels are allowed");
                    let source = deep_filter(shape, size);
                    let mut compiled = CompiledExpression::compile(&expression(&source)).unwrap();
                    let event = json!({"a": 1, "s": "a"});
                    let result = compiled.evaluate(event.as_object().unwrap());
                    // Indexing and selecting into an int fail, but only after descending
                    // the whole depth.
                    if !matches!(shape, "indexes" | "fields") {
                        assert!(result.is_ok(), "{shape} at {size}: {result:?}");
                    }
                }
                // The 3 KB filter that used to overflow the stack of a worker.
                let too_deep = deep_filter("sum", 750);
                let error =
                    sluice_crds::load_manifest(&crate::testing::manifest_with_filter(&too_deep))
                        .unwrap_err()
                        .to_string();
                assert!(error.contains("nests more than 250 levels deep"), "{error}");
            })
            .unwrap()
            .join()
            .unwrap();
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            (-3i64..3).prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e3f64..1e3).prop_map(Value::from),
            prop_oneof![Just(0.0), Just(-0.0), Just(2.0), Just(1e19), Just(-2.5)]
                .prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            Just(Value::Null),
            Just(json!([1, "a"])),
            Just(json!({"k": 1})),
        ]
    }

    fn literal_source() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            (-3i64..3).prop_map(|integer| integer.to_string()),
            any::<i64>().prop_map(|integer| integer.to_string()),
            (0u64..3).prop_map(|unsigned| format!("{unsigned}u")),
            Just("18446744073709551615u".to_string()),
            prop_oneof![
                Just("0.0"),
                Just("2.0"),
                Just("-2.5"),
                Just("1e19"),
                Just("150.0")
            ]
            .prop_map(String::from),
            "[a-c]{0,2}".prop_map(|text| format!("'{text}'")),
            any::<bool>().prop_map(|boolean| boolean.to_string()),
        ]
    }

    proptest::proptest! {
        /// The native fast path gives exactly what CEL gives: the same value, or an error
        /// in both, for every shape it takes over.
        #[test]
        fn the_native_path_agrees_with_cel(
            value in json_value(),
            operator in proptest::sample::select(vec!["==", "!=", "<", "<=", ">", ">="]),
            literal in literal_source(),
            literal_first in proptest::bool::ANY,
            present in proptest::bool::ANY,
        ) {
            let source = if literal_first {
                format!("{literal} {operator} event.x")
            } else {
                format!("event.x {operator} {literal}")
            };
            let expression = Expression {
                source: source.clone(),
                event_fields: Some(["x".to_string()].into_iter().collect()),
            };
            let mut native = CompiledExpression::compile(&expression).unwrap();
            let mut cel = CompiledExpression::compile_cel_only(&expression).unwrap();
            proptest::prop_assert!(native.is_native(), "{} is not native", source);
            let mut event = Map::new();
            if present {
                event.insert("x".to_string(), value.clone());
            }
            let native_result = native.evaluate(&event).map(Cow::into_owned);
            let cel_result = cel.evaluate(&event).map(Cow::into_owned);
            proptest::prop_assert_eq!(
                native_result.as_ref().ok(),
                cel_result.as_ref().ok(),
                "{} with x = {}: native {:?}, CEL {:?}",
                source,
                value,
                native_result,
                cel_result
            );
        }
    }
}
