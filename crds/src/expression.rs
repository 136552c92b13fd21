//! The CEL expressions of a pipeline: the limits every expression is held to, and the one
//! CEL environment that validation and the worker share.
//!
//! An expression is bounded twice, so that no manifest can exhaust the memory or the
//! stack of whoever checks or runs it (`sluice-worker validate`, the controller, a
//! worker):
//!
//! 1. **Length**, before it is parsed: at most [`MAX_EXPRESSION_LENGTH`] characters. The
//!    CRD says the same (`maxLength` on every expression field, from this constant), so
//!    the API server refuses longer ones too. The parser's memory and stack grow with the
//!    text; within this length they stay small (a test parses the longest expression of
//!    every shape on a 2 MiB thread).
//! 2. **Depth**, once parsed: the parsed expression may nest at most
//!    [`MAX_EXPRESSION_DEPTH`] levels (each operator, field selection, call, index and
//!    literal list or map adds one; `&&` and `||` chains are balanced, so `n` terms add
//!    about log2(n)). Evaluation recurses once per level; at this depth it needs far less
//!    than the 2 MiB stack of a tokio worker thread (tested). The API server cannot check
//!    depth (a CRD has no CEL parser for a string field), so only `validate` and the
//!    controller do: an expression the API server accepts may still be refused here.
//!
//! [`environment`] is the standard library plus the strings extension of cel-go (as
//! Kubernetes enables it): `split`, `lowerAscii`, `upperAscii`, `replace`, `substring`,
//! `trim`, `join`, `indexOf`, `lastIndexOf`, `charAt`.

use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};

/// The most characters (Unicode code points, as the API server counts `maxLength`) an
/// expression may have. Also the `maxLength` of every expression field of the CRD.
pub const MAX_EXPRESSION_LENGTH: usize = 4096;

/// The deepest a parsed expression may nest (see [`depth`]).
///
/// A chain of about 1,400 additions overflows a 2 MiB stack when evaluated; 250 levels
/// leave a margin of five and are far more than a readable expression needs (the CEL
/// specification asks implementations to support 12).
pub const MAX_EXPRESSION_DEPTH: usize = 250;

/// Why an expression cannot be used, before its types are looked at.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExpressionError {
    /// Longer than [`MAX_EXPRESSION_LENGTH`].
    #[error(
        "the CEL expression is {length} characters long, more than the {MAX_EXPRESSION_LENGTH} allowed: shorten it, or compute parts of it in a map step before"
    )]
    TooLong {
        /// Its length in characters.
        length: usize,
    },
    /// Deeper than [`MAX_EXPRESSION_DEPTH`].
    #[error(
        "the CEL expression nests more than {MAX_EXPRESSION_DEPTH} levels deep (each operator, field, call and bracket adds one): split it, for example compute parts of it in a map step before"
    )]
    TooDeep,
    /// Not CEL.
    #[error("failed to parse the CEL expression {expression:?}: {detail}")]
    Parse {
        /// The expression.
        expression: String,
        /// The parser's errors, on one line.
        detail: String,
    },
}

/// Parses an expression within the limits: its length is checked before parsing, its
/// depth after.
pub fn parse(source: &str) -> Result<cel::Program, ExpressionError> {
    let length = source.chars().count();
    if length > MAX_EXPRESSION_LENGTH {
        return Err(ExpressionError::TooLong { length });
    }
    // The parser is not ours: whatever it does on strange input, a caller such as the
    // controller must get an error, never a panic.
    let parsed = std::panic::catch_unwind(|| cel::Program::compile(source)).map_err(|_| {
        ExpressionError::Parse {
            expression: source.to_string(),
            detail: "the CEL parser failed on it".to_string(),
        }
    })?;
    let program = parsed.map_err(|errors| ExpressionError::Parse {
        expression: source.to_string(),
        detail: errors.to_string().replace('\n', " "),
    })?;
    if depth(program.expression()) > MAX_EXPRESSION_DEPTH {
        return Err(ExpressionError::TooDeep);
    }
    Ok(program)
}

/// How deep an expression nests: 1 for a literal or a variable, one more for each
/// operator, call, field selection, index, list or map around it. Measured without
/// recursion, so any parsed expression can be measured on any stack.
pub fn depth(expression: &IdedExpr) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(expression, 1)];
    while let Some((node, level)) = pending.pop() {
        deepest = deepest.max(level);
        let below = level + 1;
        match &node.expr {
            Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => {}
            Expr::Call(call) => {
                pending.extend(call.target.iter().map(|target| (target.as_ref(), below)));
                pending.extend(call.args.iter().map(|argument| (argument, below)));
            }
            Expr::Select(select) => pending.push((&select.operand, below)),
            Expr::List(list) => {
                pending.extend(list.elements.iter().map(|element| (element, below)))
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(entry) => {
                            pending.push((&entry.key, below));
                            pending.push((&entry.value, below));
                        }
                        EntryExpr::StructField(field) => pending.push((&field.value, below)),
                    }
                }
            }
            Expr::Struct(structure) => {
                for entry in &structure.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(entry) => {
                            pending.push((&entry.key, below));
                            pending.push((&entry.value, below));
                        }
                        EntryExpr::StructField(field) => pending.push((&field.value, below)),
                    }
                }
            }
            Expr::Comprehension(comprehension) => pending.extend(
                [
                    &comprehension.iter_range,
                    &comprehension.accu_init,
                    &comprehension.loop_cond,
                    &comprehension.loop_step,
                    &comprehension.result,
                ]
                .map(|part| (part, below)),
            ),
        }
    }
    deepest
}

/// The CEL environment expressions are evaluated in: the standard library and the strings
/// extension. Built once; a `cel::Context::with_env` of it is cheap.
pub fn environment() -> Arc<cel::Env> {
    static ENVIRONMENT: LazyLock<Arc<cel::Env>> = LazyLock::new(|| {
        let mut environment = cel::Env::stdlib();
        environment
            .add_extension(cel::extensions::strings)
            .expect("the strings extension registers once on a fresh environment");
        Arc::new(environment)
    });
    ENVIRONMENT.clone()
}

/// A fresh context of [`environment`], to bind `event` in and evaluate with.
pub fn context() -> cel::Context<'static, 'static> {
    cel::Context::with_env(environment())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An expression of a given shape, `size` units big.
    fn shape(name: &str, size: usize) -> String {
        match name {
            "sum" => format!("{} > 0", vec!["1"; size].join(" + ")),
            "or" => vec!["event.a == 1"; size].join(" || "),
            "parentheses" => format!("{}true{}", "(".repeat(size), ")".repeat(size)),
            "calls" => format!("{}1{} > 0", "int(".repeat(size), ")".repeat(size)),
            "lists" => format!("size({}1{}) > 0", "[".repeat(size), "]".repeat(size)),
            "maps" => format!("size({}1{}) > 0", "{'a': ".repeat(size), "}".repeat(size)),
            "fields" => format!("has(event{})", ".a".repeat(size)),
            "indexes" => format!("event.a{} == 1", "[0]".repeat(size)),
            "methods" => format!("'a'{} == 'a'", ".trim()".repeat(size)),
            "conditionals" => format!("{}true", "false ? false : ".repeat(size)),
            "comprehensions" => format!("{}true{}", "[1].all(x, ".repeat(size), ")".repeat(size)),
            _ => unreachable!("no shape {name}"),
        }
    }

    const SHAPES: [&str; 11] = [
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

    #[test]
    fn depth_counts_levels() {
        let cases = [
            ("1", 1),
            ("event", 1),
            ("event.a", 2),
            ("1 + 2", 2),
            ("1 + 2 + 3", 3),
            ("event.a == 1", 3),
            ("[[1]]", 3),
            ("{'a': {'b': 1}}", 3),
            ("f(g(1))", 3),
            // Logical chains are balanced.
            ("true || true || true || true", 3),
        ];
        for (source, expected) in cases {
            let program = cel::Program::compile(source).unwrap();
            assert_eq!(depth(program.expression()), expected, "{source}");
        }
    }

    #[test]
    fn expressions_beyond_the_limits_are_refused_before_they_are_used() {
        let too_long = format!("'{}'", "a".repeat(MAX_EXPRESSION_LENGTH - 1));
        assert_eq!(
            parse(&too_long).err(),
            Some(ExpressionError::TooLong {
                length: MAX_EXPRESSION_LENGTH + 1
            })
        );
        let longest = format!("'{}'", "é".repeat(MAX_EXPRESSION_LENGTH - 2));
        assert!(parse(&longest).is_ok(), "the limit counts characters");
        let too_deep = shape("sum", MAX_EXPRESSION_DEPTH);
        assert_eq!(parse(&too_deep).err(), Some(ExpressionError::TooDeep));
        let deepest = shape("sum", MAX_EXPRESSION_DEPTH - 2);
        assert!(parse(&deepest).is_ok());
    }

    /// Every shape at the greatest size that parses within the limits, and the size after.
    fn deepest_allowed(name: &str) -> (String, usize) {
        let mut size = 1;
        while parse(&shape(name, size + 1)).is_ok() {
            size += 1;
        }
        (shape(name, size), size)
    }

    /// On a thread with the stack of a tokio worker (2 MiB), the longest expression of
    /// each shape is refused without overflowing it, and the deepest one allowed parses
    /// and evaluates.
    #[test]
    fn the_limits_hold_on_a_two_mebibyte_stack() {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                for name in SHAPES {
                    // As long as the length limit allows: refused or parsed, never a crash.
                    let mut size = 1;
                    while shape(name, size * 2).chars().count() <= MAX_EXPRESSION_LENGTH {
                        size *= 2;
                    }
                    while shape(name, size + 1).chars().count() <= MAX_EXPRESSION_LENGTH {
                        size += 1;
                    }
                    let longest = shape(name, size);
                    let _ = parse(&longest);
                    let _ = parse(&format!("{longest} "));

                    let (deepest, size) = deepest_allowed(name);
                    let program = parse(&deepest).unwrap();
                    let mut context = context();
                    let event: std::collections::HashMap<String, cel::Value> =
                        [("a".to_string(), cel::Value::Int(1))].into();
                    context.add_variable_from_value("event", event);
                    let _ = program.execute(&context);
                    assert!(size >= 8, "{name}: only {size} levels allowed");
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn the_environment_has_the_strings_extension() {
        let cases = [
            ("'/a?b=1'.split('?')[0]", cel::Value::from("/a")),
            ("'a,b,c'.split(',', 2).size()", cel::Value::Int(2)),
            ("'AbC'.lowerAscii()", cel::Value::from("abc")),
            ("'AbC'.upperAscii()", cel::Value::from("ABC")),
            ("'aaa'.replace('a', 'b', 2)", cel::Value::from("bba")),
            ("'héllo'.substring(1, 3)", cel::Value::from("él")),
            ("'  x '.trim()", cel::Value::from("x")),
            ("['a', 'b'].join('-')", cel::Value::from("a-b")),
            ("'abcb'.lastIndexOf('b')", cel::Value::Int(3)),
            ("'abc'.charAt(1)", cel::Value::from("b")),
        ];
        for (source, expected) in cases {
            let value = parse(source).unwrap().execute(&context());
            assert_eq!(value, Ok(expected), "{source}");
        }
        assert!(
            parse("'abc'.substring(4)")
                .unwrap()
                .execute(&context())
                .is_err(),
            "substring out of range is an error"
        );
    }
}
