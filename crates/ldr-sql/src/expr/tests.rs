//! Binding and evaluation tests.

use super::*;
use crate::parser::parse_expr;

fn scope() -> Scope {
    let col = |name: &str, ty: SqlType| ScopeColumn {
        table: Some("t".into()),
        name: name.into(),
        ty,
        hidden: false,
    };
    Scope {
        columns: vec![
            col("id", SqlType::Int8),
            col("s", SqlType::String),
            col("f", SqlType::Float8),
            col("d", SqlType::DECIMAL),
            col("ts", SqlType::TimestampTz),
            col("b", SqlType::Bool),
            col("j", SqlType::Jsonb),
            col("n", SqlType::Int4),
        ],
    }
}

fn row() -> Vec<Datum> {
    vec![
        Datum::Int(7),
        Datum::String("Hello".into()),
        Datum::Float(1.5),
        Datum::Decimal(Decimal::new(250, 2)),
        Datum::TimestampTz(1_700_000_000_000_000),
        Datum::Null,
        Datum::Json(serde_json::json!({"a": {"b": [1, 2]}, "s": "x"})),
        Datum::Int(3),
    ]
}

fn eval_with(text: &str, params: Vec<Datum>) -> Result<(Datum, SqlType)> {
    let sc = scope();
    let mut ptypes = Vec::new();
    let mut b = Binder::new(&sc, &mut ptypes);
    let (x, ty) = b.bind(&parse_expr(text)?)?;
    let ctx = EvalCtx {
        params,
        now_micros: 1_700_000_000_000_000,
        ..EvalCtx::default()
    };
    Ok((x.eval(&row(), &ctx)?, ty))
}

fn ev(text: &str) -> Datum {
    eval_with(text, vec![])
        .unwrap_or_else(|e| panic!("{text}: {} {}", e.code(), e.message()))
        .0
}

fn text(text: &str) -> String {
    ev(text).to_text(0).unwrap_or_else(|| "NULL".into())
}

#[test]
fn arithmetic_and_comparisons() {
    assert_eq!(ev("id + 1"), Datum::Int(8));
    assert_eq!(text("id / 2"), "3.5");
    assert_eq!(text("id * f"), "10.5");
    assert_eq!(text("d + 1"), "3.50");
    assert_eq!(ev("id > 5 AND f < 2"), Datum::Bool(true));
    assert_eq!(ev("id = 7.0"), Datum::Bool(true));
    assert_eq!(ev("b AND false"), Datum::Bool(false));
    assert_eq!(ev("b OR true"), Datum::Bool(true));
    assert_eq!(ev("b OR false"), Datum::Null);
    assert_eq!(ev("NOT (id < 3)"), Datum::Bool(true));
    assert_eq!(ev("id % 4"), Datum::Int(3));
    assert_eq!(ev("-id"), Datum::Int(-7));
    assert_eq!(ev("n BETWEEN 1 AND 3"), Datum::Bool(true));
    assert_eq!(ev("id IN (1, 2, 7)"), Datum::Bool(true));
    assert_eq!(ev("id NOT IN (1, NULL)"), Datum::Null);
    assert_eq!(ev("b IS NULL"), Datum::Bool(true));
    assert_eq!(ev("s IS NOT NULL"), Datum::Bool(true));
    assert_eq!(ev("s IS DISTINCT FROM NULL"), Datum::Bool(true));
    assert_eq!(
        ev("CASE WHEN id > 5 THEN 'big' ELSE 'small' END"),
        Datum::String("big".into())
    );
    assert_eq!(ev("CASE id WHEN 7 THEN 1 ELSE 0 END"), Datum::Int(1));
    assert_eq!(ev("'5'::INT8 + 1"), Datum::Int(6));
    assert_eq!(ev("1:::INT8"), Datum::Int(1));
    assert_eq!(ev("CAST(id AS STRING)"), Datum::String("7".into()));
    let e = eval_with("id / 0", vec![]).expect_err("div by zero");
    assert_eq!(e.code(), "22012");
    let e = eval_with("9223372036854775807 + id", vec![]).expect_err("overflow");
    assert_eq!(e.code(), "22003");
}

#[test]
fn strings_and_functions() {
    assert_eq!(text("length(s)"), "5");
    // RFC 1321's test suite.
    assert_eq!(text("md5('')"), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(text("md5('abc')"), "900150983cd24fb0d6963f7d28e17f72");
    assert_eq!(
        text(
            "md5('12345678901234567890123456789012345678901234567890123456789012345678901234567890')"
        ),
        "57edf4a22be3c955ac49da2e2107b67a"
    );
    assert_eq!(text("lower(s) || upper(s)"), "helloHELLO");
    assert_eq!(text("concat(s, ' ', id, NULL)"), "Hello 7");
    assert_eq!(text("coalesce(b, true)"), "t");
    assert_eq!(text("coalesce(NULL, 2, 3)"), "2");
    assert_eq!(text("abs(-5)"), "5");
    assert_eq!(text("abs(-2.5)"), "2.5");
    assert_eq!(text("substring(s from 2 for 3)"), "ell");
    assert_eq!(text("substr(s, 2)"), "ello");
    assert_eq!(text("trim('  x  ')"), "x");
    assert_eq!(text("replace(s, 'l', 'L')"), "HeLLo");
    assert_eq!(text("round(2.345, 2)"), "2.35");
    assert_eq!(text("greatest(1, id, 3)"), "7");
    assert_eq!(text("md5('abc')"), "900150983cd24fb0d6963f7d28e17f72");
    assert_eq!(ev("s LIKE 'H%o'"), Datum::Bool(true));
    assert_eq!(ev("s LIKE 'h%'"), Datum::Bool(false));
    assert_eq!(ev("s ILIKE 'h%'"), Datum::Bool(true));
    assert_eq!(ev("s NOT LIKE '_ello'"), Datum::Bool(false));
    assert_eq!(ev("'a%b' LIKE 'a\\%b'"), Datum::Bool(true));
    assert_eq!(text("j->'a'->'b'"), "[1, 2]");
    assert_eq!(text("j->>'s'"), "x");
    assert_eq!(text("current_database()"), "defaultdb");
    assert_eq!(text("current_user"), "root");
    assert!(text("version()").contains("CockroachDB"));
    assert_eq!(ev("gen_random_uuid() IS NOT NULL"), Datum::Bool(true));
    assert!(matches!(ev("unique_rowid()"), Datum::Int(i) if i > 0));
    assert!(matches!(
        ev("cluster_logical_timestamp()"),
        Datum::Decimal(_)
    ));
    let e = eval_with("nosuchfn(1)", vec![]).expect_err("unknown");
    assert_eq!(e.code(), "42883");
}

#[test]
fn time_arithmetic() {
    assert_eq!(text("now()"), "2023-11-14 22:13:20+00");
    assert_eq!(text("now() + interval '1 day'"), "2023-11-15 22:13:20+00");
    assert_eq!(text("ts - interval '1h'"), "2023-11-14 21:13:20+00");
    assert_eq!(text("ts - (ts - interval '2 days')"), "2 days");
    assert_eq!(ev("ts > '2023-01-01'"), Datum::Bool(true));
    assert_eq!(text("date '2024-01-31' + 1"), "2024-02-01");
    assert_eq!(text("extract(year from ts)"), "2023");
    assert_eq!(text("date_trunc('day', ts)"), "2023-11-14 00:00:00+00");
    assert_eq!(text("interval '1 hour' * 2"), "02:00:00");
}

#[test]
fn parameters_take_their_context_type() {
    let sc = scope();
    let mut ptypes = Vec::new();
    let mut b = Binder::new(&sc, &mut ptypes);
    b.bind(&parse_expr("id = $1 AND s = $2 AND ts > $3 AND $4 + 1 > 0").expect("parses"))
        .expect("binds");
    assert_eq!(
        ptypes,
        vec![
            Some(SqlType::Int8),
            Some(SqlType::String),
            Some(SqlType::TimestampTz),
            Some(SqlType::Int8)
        ]
    );
    let (v, _) = eval_with("id = $1", vec![Datum::Int(7)]).expect("evaluates");
    assert_eq!(v, Datum::Bool(true));
    let e = eval_with("id = $2", vec![Datum::Int(7)]).expect_err("missing param");
    assert_eq!(e.code(), "42P02");
}

#[test]
fn type_errors() {
    for (text, code) in [
        ("s = 1", "42883"),
        ("id = 'abc'", "22P02"),
        ("nosuch = 1", "42703"),
        ("x.id = 1", "42P01"),
        ("s + 1", "42883"),
        ("NOT s", "42804"),
        ("count(*)", "42803"),
    ] {
        let e = eval_with(text, vec![]).expect_err(text);
        assert_eq!(e.code(), code, "{text}: {}", e.message());
    }
}

#[test]
fn aggregates_bind_to_group_slots() {
    let sc = scope();
    let mut ptypes = Vec::new();
    let mut agg = AggBinding {
        group_exprs: vec![ScalarExpr::Column(1)],
        aggs: vec![],
    };
    {
        let mut b = Binder {
            scope: &sc,
            params: &mut ptypes,
            agg: Some(&mut agg),
        };
        let (x, ty) = b
            .bind(&parse_expr("s").expect("parses"))
            .expect("group column binds");
        assert_eq!((x, ty), (ScalarExpr::Column(0), SqlType::String));
        let (x, ty) = b
            .bind(&parse_expr("count(*) + sum(id)").expect("parses"))
            .expect("aggregates bind");
        assert_eq!(ty, SqlType::DECIMAL);
        assert!(matches!(x, ScalarExpr::Binary(BinOp::Add, _, _)));
        let e = b
            .bind(&parse_expr("id").expect("parses"))
            .expect_err("ungrouped column");
        assert_eq!(e.code(), "42803");
    }
    assert_eq!(agg.aggs.len(), 2);
    assert_eq!(agg.aggs[0].func, AggFunc::CountStar);
    assert_eq!(agg.aggs[1].func, AggFunc::Sum);
}

#[test]
fn like_matcher() {
    assert!(like_match("abc", "a%", Some('\\')));
    assert!(like_match("abc", "%c", Some('\\')));
    assert!(like_match("abc", "%b%", Some('\\')));
    assert!(like_match("abc", "a_c", Some('\\')));
    assert!(!like_match("abc", "a_", Some('\\')));
    assert!(like_match("", "%", Some('\\')));
    assert!(like_match("a%", "a\\%", Some('\\')));
    assert!(!like_match("ab", "a\\%", Some('\\')));
    assert!(like_match("aXbXc", "a%b%c", Some('\\')));
}

#[test]
fn byte_literals_unescape() {
    assert_eq!(unescape_bytes("\\x00ab"), vec![0x00, b'a', b'b']);
    assert_eq!(unescape_bytes("a\\\\b\\n"), b"a\\b\n".to_vec());
    assert_eq!(unescape_bytes("\\xZZ"), b"\\xZZ".to_vec());
    assert_eq!(text("b'\\x41\\x42'"), "\\x4142");
}

#[test]
fn the_function_table_is_in_variant_order_and_every_name_resolves_to_its_row() {
    let mut seen = std::collections::HashSet::new();
    for (i, d) in BUILTINS.iter().enumerate() {
        assert_eq!(d.func as usize, i, "{} is out of order", d.name);
        for name in std::iter::once(d.name).chain(d.aliases.iter().copied()) {
            assert!(seen.insert(name), "{name} is listed twice");
            assert_eq!(Builtin::lookup(name), Some(d.func), "{name}");
        }
    }
    assert_eq!(Builtin::lookup("no_such_function"), None);
}

/// Every built-in, with every argument count from 0 to 4 and arguments of every kind: the
/// counts its row admits bind (or fail with 42883/42804 on a type) and then evaluate without a
/// panic; every other count fails with 42883 when bound. Arity and evaluation cannot disagree.
#[test]
fn every_builtin_binds_by_its_arity_and_evaluates_what_binds() {
    let kinds = [
        "NULL",
        "'2024-05-06'",
        "s",
        "id",
        "f",
        "d",
        "ts",
        "b",
        "j",
        "-3",
        "'x'",
    ];
    for d in BUILTINS {
        for n in 0..=4usize {
            let mut bound_any = false;
            for k in 0..kinds.len() {
                let args: Vec<&str> = (0..n).map(|i| kinds[(k + i * 3) % kinds.len()]).collect();
                let mut sql = format!("{}({})", d.name, args.join(", "));
                let mut result = eval_with(&sql, vec![]);
                if let Err(e) = &result
                    && e.code() == sqlstate::SYNTAX_ERROR
                {
                    // SQL keywords (`current_user`, `localtimestamp`) take no parentheses:
                    // without arguments they are written bare, with some they do not parse.
                    if n > 0 {
                        continue;
                    }
                    sql = d.name.to_string();
                    result = eval_with(&sql, vec![]);
                }
                match result {
                    Ok(_) => bound_any = true,
                    Err(e) if d.arity.admits(n) => {
                        // A type the function does not take, or a value it refuses.
                        assert_ne!(e.code(), "XX000", "{sql}: {}", e.message());
                        if e.code() != sqlstate::UNDEFINED_FUNCTION {
                            bound_any = true;
                        }
                    }
                    Err(e) => assert_eq!(
                        e.code(),
                        sqlstate::UNDEFINED_FUNCTION,
                        "{sql} should not bind: {}",
                        e.message()
                    ),
                }
            }
            if d.arity.admits(n) {
                assert!(bound_any, "{}() with {n} arguments never bound", d.name);
            }
        }
    }
}

#[test]
fn aliases_and_niladic_names_evaluate_like_their_function() {
    assert_eq!(text("character_length('héllo')"), "5");
    assert_eq!(text("pow(2, 3)"), text("power(2, 3)"));
    assert_eq!(text("extract('year', ts)"), "2023");
    assert_eq!(text("ifnull(NULL, 4)"), "4");
    assert_eq!(text("session_user"), text("current_user"));
    assert_eq!(text("user"), text("current_user"));
    // As PostgreSQL: quoted only when needed.
    assert_eq!(text("quote_ident('abc_1')"), "abc_1");
    assert_eq!(text("quote_ident('Ab \"c')"), "\"Ab \"\"c\"");
    assert_eq!(text("quote_ident('select')"), "\"select\"");
    for bad in [
        "strpos('a')",
        "mod(1)",
        "power(2)",
        "to_json()",
        "concat_ws()",
    ] {
        let e = eval_with(bad, vec![]).expect_err(bad);
        assert_eq!(e.code(), sqlstate::UNDEFINED_FUNCTION, "{bad}");
    }
}
