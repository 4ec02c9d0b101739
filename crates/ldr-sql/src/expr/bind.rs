//! Binding: sqlparser expressions to typed [`ScalarExpr`] trees against a [`Scope`].

use super::*;

/// Binds sqlparser expressions.
pub struct Binder<'a> {
    pub scope: &'a Scope,
    /// Inferred parameter types, indexed by `$n - 1`; grows as parameters are seen.
    pub params: &'a mut Vec<Option<SqlType>>,
    /// `Some` while binding post-aggregation expressions.
    pub agg: Option<&'a mut AggBinding>,
}

impl<'a> Binder<'a> {
    pub fn new(scope: &'a Scope, params: &'a mut Vec<Option<SqlType>>) -> Binder<'a> {
        Binder {
            scope,
            params,
            agg: None,
        }
    }

    /// Binds with a desired type: untyped literals and parameters take it; other values must
    /// be assignable (checked again at write time).
    pub fn bind_typed(&mut self, e: &sql::Expr, want: &SqlType) -> Result<(ScalarExpr, SqlType)> {
        let (x, ty) = self.bind(e)?;
        if ty == SqlType::Unknown {
            return self.coerce_unknown(x, want);
        }
        Ok((x, ty))
    }

    /// Gives an untyped expression (string literal, NULL, parameter) a type.
    pub fn coerce_unknown(
        &mut self,
        x: ScalarExpr,
        want: &SqlType,
    ) -> Result<(ScalarExpr, SqlType)> {
        if *want == SqlType::Unknown {
            return Ok((x, SqlType::Unknown));
        }
        match x {
            ScalarExpr::Const(Datum::String(s)) => Ok((
                ScalarExpr::Const(Datum::parse_text(&s, want)?),
                want.clone(),
            )),
            ScalarExpr::Const(Datum::Null) => Ok((ScalarExpr::Const(Datum::Null), want.clone())),
            ScalarExpr::Param(i) => {
                self.set_param_type(i, want.clone());
                Ok((ScalarExpr::Param(i), want.clone()))
            }
            other => Ok((
                ScalarExpr::Cast(Box::new(other), want.clone()),
                want.clone(),
            )),
        }
    }

    fn set_param_type(&mut self, i: usize, ty: SqlType) {
        if self.params.len() <= i {
            self.params.resize(i + 1, None);
        }
        if self.params[i].is_none() {
            self.params[i] = Some(ty);
        }
    }

    fn param(&mut self, p: &str) -> Result<(ScalarExpr, SqlType)> {
        let n: usize = p
            .trim_start_matches('$')
            .parse()
            .map_err(|_| SqlError::syntax(p))?;
        if n == 0 || n > 65535 {
            return Err(SqlError::new(
                sqlstate::UNDEFINED_PARAMETER,
                format!("there is no parameter {p}"),
            ));
        }
        let i = n - 1;
        if self.params.len() <= i {
            self.params.resize(i + 1, None);
        }
        let ty = self.params[i].clone().unwrap_or(SqlType::Unknown);
        Ok((ScalarExpr::Param(i), ty))
    }

    pub fn bind(&mut self, e: &sql::Expr) -> Result<(ScalarExpr, SqlType)> {
        if self.agg.is_some() {
            return self.bind_post_agg(e);
        }
        self.bind_inner(e)
    }

    /// Post-aggregation binding: aggregates become group-row slots, expressions equal to a
    /// GROUP BY expression read the group key, other column references are errors.
    fn bind_post_agg(&mut self, e: &sql::Expr) -> Result<(ScalarExpr, SqlType)> {
        if let sql::Expr::Function(f) = e {
            let name = function_name(&f.name);
            if is_aggregate_name(&name) {
                return self.bind_aggregate(&name, f);
            }
        }
        if !contains_aggregate(e) {
            let saved = self.agg.take();
            let bound = self.bind_inner(e);
            self.agg = saved;
            let (x, ty) = bound?;
            let agg = self
                .agg
                .as_ref()
                .expect("post-aggregation binding has an aggregation state");
            if let Some(i) = agg.group_exprs.iter().position(|g| *g == x) {
                return Ok((ScalarExpr::Column(i), ty));
            }
            if !x.references_columns() {
                return Ok((x, ty));
            }
            if let ScalarExpr::Column(c) = x {
                let col = &self.scope.columns[c];
                let name = match &col.table {
                    Some(t) => format!("{t}.{}", col.name),
                    None => col.name.clone(),
                };
                return Err(SqlError::new(
                    sqlstate::GROUPING_ERROR,
                    format!(
                        "column \"{name}\" must appear in the GROUP BY clause or be used in an aggregate function"
                    ),
                ));
            }
        }
        self.bind_inner(e)
    }

    fn bind_aggregate(&mut self, name: &str, f: &sql::Function) -> Result<(ScalarExpr, SqlType)> {
        let (args, distinct) = match &f.args {
            sql::FunctionArguments::List(l) => (
                &l.args,
                matches!(
                    l.duplicate_treatment,
                    Some(sql::DuplicateTreatment::Distinct)
                ),
            ),
            _ => {
                return Err(SqlError::new(
                    sqlstate::UNDEFINED_FUNCTION,
                    format!("unknown signature: {name}()"),
                ));
            }
        };
        if f.over.is_some() {
            return Err(SqlError::unsupported("window functions"));
        }
        let saved = self.agg.take();
        let result = (|| -> Result<AggSpec> {
            let star = args.len() == 1
                && matches!(
                    args[0],
                    sql::FunctionArg::Unnamed(sql::FunctionArgExpr::Wildcard)
                );
            if name == "count" && (star || args.is_empty()) {
                return Ok(AggSpec {
                    func: AggFunc::CountStar,
                    arg: None,
                    arg2: None,
                    distinct: false,
                    ty: SqlType::Int8,
                });
            }
            let exprs: Vec<&sql::Expr> = args
                .iter()
                .map(|a| match a {
                    sql::FunctionArg::Unnamed(sql::FunctionArgExpr::Expr(x)) => Ok(x),
                    _ => Err(SqlError::unsupported(format!("argument {a} to {name}"))),
                })
                .collect::<Result<_>>()?;
            let want_args = if name == "string_agg" { 2 } else { 1 };
            if exprs.len() != want_args {
                return Err(SqlError::new(
                    sqlstate::UNDEFINED_FUNCTION,
                    format!("unknown signature: {name}() with {} arguments", exprs.len()),
                ));
            }
            if contains_aggregate(exprs[0]) {
                return Err(SqlError::new(
                    sqlstate::GROUPING_ERROR,
                    "aggregate function calls cannot be nested",
                ));
            }
            let (arg, ty) = self.bind_inner(exprs[0])?;
            let (arg, ty) = if ty == SqlType::Unknown {
                self.coerce_unknown(arg, &SqlType::String)?
            } else {
                (arg, ty)
            };
            let (func, out) = match name {
                "count" => (AggFunc::Count, SqlType::Int8),
                "sum" => match ty.family() {
                    TypeFamily::Int | TypeFamily::Decimal => (AggFunc::Sum, SqlType::DECIMAL),
                    TypeFamily::Float => (AggFunc::Sum, SqlType::Float8),
                    TypeFamily::Interval => (AggFunc::Sum, SqlType::Interval),
                    _ => return Err(unknown_signature(name, &[ty])),
                },
                "avg" => match ty.family() {
                    TypeFamily::Int | TypeFamily::Decimal => (AggFunc::Avg, SqlType::DECIMAL),
                    TypeFamily::Float => (AggFunc::Avg, SqlType::Float8),
                    _ => return Err(unknown_signature(name, &[ty])),
                },
                "min" => (AggFunc::Min, ty.clone()),
                "max" => (AggFunc::Max, ty.clone()),
                "bool_and" | "every" => (AggFunc::BoolAnd, SqlType::Bool),
                "bool_or" => (AggFunc::BoolOr, SqlType::Bool),
                "string_agg" => (AggFunc::StringAgg, SqlType::String),
                _ => {
                    return Err(SqlError::new(
                        sqlstate::UNDEFINED_FUNCTION,
                        format!("unknown function: {name}()"),
                    ));
                }
            };
            let arg2 = if func == AggFunc::StringAgg {
                let (s, sty) = self.bind_inner(exprs[1])?;
                let (s, _) = if sty == SqlType::Unknown {
                    self.coerce_unknown(s, &SqlType::String)?
                } else {
                    (s, sty)
                };
                Some(s)
            } else {
                None
            };
            Ok(AggSpec {
                func,
                arg: Some(arg),
                arg2,
                distinct,
                ty: out,
            })
        })();
        self.agg = saved;
        let spec = result?;
        let agg = self.agg.as_mut().ok_or_else(|| {
            SqlError::new(
                sqlstate::GROUPING_ERROR,
                format!("aggregate functions are not allowed here ({name})"),
            )
        })?;
        let ty = spec.ty.clone();
        let slot = agg.group_exprs.len() + agg.aggs.len();
        agg.aggs.push(spec);
        Ok((ScalarExpr::Column(slot), ty))
    }

    fn bind_inner(&mut self, e: &sql::Expr) -> Result<(ScalarExpr, SqlType)> {
        use sql::Expr as E;
        // Binding recurses once per level of `e`: 54001 rather than a stack overflow.
        crate::stack::check_stack_depth()?;
        match e {
            E::Identifier(id) => self.identifier(None, id),
            E::CompoundIdentifier(parts) => {
                let names: Vec<String> = parts.iter().map(normalize_ident).collect();
                let n = names.len();
                if n < 2 {
                    return Err(unsupported_expr(e));
                }
                let col = &names[n - 1];
                let table = &names[n - 2];
                let idx = self.scope.resolve(Some(table), col)?;
                Ok((ScalarExpr::Column(idx), self.scope.columns[idx].ty.clone()))
            }
            E::Value(v) => self.value(&v.value),
            E::Nested(x) => self.bind(x),
            E::UnaryOp { op, expr } => {
                let (x, ty) = self.bind(expr)?;
                match op {
                    sql::UnaryOperator::Not => {
                        let (x, _) = self.expect_bool(x, ty, "NOT")?;
                        Ok((ScalarExpr::Not(Box::new(x)), SqlType::Bool))
                    }
                    sql::UnaryOperator::Minus => {
                        if let ScalarExpr::Const(d) = &x {
                            return Ok((ScalarExpr::Const(negate(d)?), ty));
                        }
                        let (x, ty) = if ty == SqlType::Unknown {
                            self.coerce_unknown(x, &SqlType::DECIMAL)?
                        } else {
                            (x, ty)
                        };
                        if !ty.is_numeric() && ty.family() != TypeFamily::Interval {
                            return Err(SqlError::new(
                                sqlstate::UNDEFINED_FUNCTION,
                                format!("unsupported unary operator: -<{}>", ty.family_name()),
                            ));
                        }
                        Ok((ScalarExpr::Neg(Box::new(x)), ty))
                    }
                    sql::UnaryOperator::Plus => Ok((x, ty)),
                    sql::UnaryOperator::BitwiseNot => {
                        Ok((ScalarExpr::BitNot(Box::new(x)), SqlType::Int8))
                    }
                    _ => Err(unsupported_expr(e)),
                }
            }
            E::BinaryOp { left, op, right } => self.binary(e, left, op, right),
            E::IsNull(x) => Ok((
                ScalarExpr::IsNull(Box::new(self.bind(x)?.0), false),
                SqlType::Bool,
            )),
            E::IsNotNull(x) => Ok((
                ScalarExpr::IsNull(Box::new(self.bind(x)?.0), true),
                SqlType::Bool,
            )),
            E::IsTrue(x) => self.is_bool(x, true, false),
            E::IsNotTrue(x) => self.is_bool(x, true, true),
            E::IsFalse(x) => self.is_bool(x, false, false),
            E::IsNotFalse(x) => self.is_bool(x, false, true),
            E::IsUnknown(x) => Ok((
                ScalarExpr::IsNull(Box::new(self.bind(x)?.0), false),
                SqlType::Bool,
            )),
            E::IsNotUnknown(x) => Ok((
                ScalarExpr::IsNull(Box::new(self.bind(x)?.0), true),
                SqlType::Bool,
            )),
            E::IsDistinctFrom(a, b) | E::IsNotDistinctFrom(a, b) => {
                let (a, b, _) = self.bind_pair(a, b)?;
                let negated = matches!(e, E::IsNotDistinctFrom(..));
                Ok((
                    ScalarExpr::IsDistinct(Box::new(a), Box::new(b), negated),
                    SqlType::Bool,
                ))
            }
            E::InList {
                expr,
                list,
                negated,
            } => {
                let (mut x, mut ty) = self.bind(expr)?;
                let mut items = Vec::with_capacity(list.len());
                let mut item_types = Vec::with_capacity(list.len());
                for item in list {
                    let (i, ity) = self.bind(item)?;
                    items.push(i);
                    item_types.push(ity);
                }
                if ty == SqlType::Unknown
                    && let Some(t) = item_types.iter().find(|t| **t != SqlType::Unknown).cloned()
                {
                    let (nx, nty) = self.coerce_unknown(x, &t)?;
                    x = nx;
                    ty = nty;
                }
                let mut bound = Vec::with_capacity(items.len());
                for (i, ity) in items.into_iter().zip(item_types) {
                    let (i, ity) = if ity == SqlType::Unknown {
                        self.coerce_unknown(i, &ty)?
                    } else {
                        (i, ity)
                    };
                    check_comparable(&ty, &ity, "IN")?;
                    bound.push(i);
                }
                Ok((
                    ScalarExpr::InList {
                        expr: Box::new(x),
                        list: bound,
                        negated: *negated,
                    },
                    SqlType::Bool,
                ))
            }
            E::InSubquery { .. } | E::Subquery(_) | E::Exists { .. } => Err(SqlError::unsupported(
                "subqueries are not supported in this context",
            )),
            E::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let (x, ty) = self.bind(expr)?;
                let (lo, lty) = self.bind(low)?;
                let (hi, hty) = self.bind(high)?;
                let target = [&ty, &lty, &hty]
                    .into_iter()
                    .find(|t| **t != SqlType::Unknown)
                    .cloned()
                    .unwrap_or(SqlType::String);
                let (x, ty) = self.coerce_unknown_if(x, ty, &target)?;
                let (lo, lty) = self.coerce_unknown_if(lo, lty, &target)?;
                let (hi, hty) = self.coerce_unknown_if(hi, hty, &target)?;
                check_comparable(&ty, &lty, "BETWEEN")?;
                check_comparable(&ty, &hty, "BETWEEN")?;
                Ok((
                    ScalarExpr::Between {
                        expr: Box::new(x),
                        low: Box::new(lo),
                        high: Box::new(hi),
                        negated: *negated,
                    },
                    SqlType::Bool,
                ))
            }
            E::Like {
                negated,
                expr,
                pattern,
                escape_char,
                any,
                ..
            }
            | E::ILike {
                negated,
                expr,
                pattern,
                escape_char,
                any,
                ..
            } => {
                if *any {
                    return Err(unsupported_expr(e));
                }
                let (x, ty) = self.bind_typed(expr, &SqlType::String)?;
                let (p, pty) = self.bind_typed(pattern, &SqlType::String)?;
                for t in [&ty, &pty] {
                    if t.family() != TypeFamily::String && *t != SqlType::Unknown {
                        return Err(SqlError::new(
                            sqlstate::UNDEFINED_FUNCTION,
                            format!(
                                "unsupported comparison operator: <{}> LIKE <{}>",
                                ty.family_name(),
                                pty.family_name()
                            ),
                        ));
                    }
                }
                let escape = match escape_char {
                    None => Some('\\'),
                    Some(x) => match self.bind(x)?.0 {
                        ScalarExpr::Const(Datum::String(s)) => s.chars().next(),
                        _ => return Err(unsupported_expr(e)),
                    },
                };
                let case_insensitive = matches!(e, E::ILike { .. });
                Ok((
                    ScalarExpr::Like {
                        expr: Box::new(x),
                        pattern: Box::new(p),
                        case_insensitive,
                        negated: *negated,
                        escape,
                    },
                    SqlType::Bool,
                ))
            }
            E::Cast {
                expr, data_type, ..
            } => {
                let ty = SqlType::parse(&data_type.to_string())?;
                let (x, xty) = self.bind(expr)?;
                if xty == SqlType::Unknown {
                    // `'5'::INT` and `$1::INT` type the literal or parameter directly.
                    return self.coerce_unknown(x, &ty);
                }
                if let ScalarExpr::Const(d) = &x {
                    return Ok((ScalarExpr::Const(d.cast(&ty)?), ty));
                }
                Ok((ScalarExpr::Cast(Box::new(x), ty.clone()), ty))
            }
            E::TypedString(ts) => {
                let ty = SqlType::parse(&ts.data_type.to_string())?;
                let text = match &ts.value.value {
                    sql::Value::SingleQuotedString(s)
                    | sql::Value::DoubleQuotedString(s)
                    | sql::Value::EscapedStringLiteral(s) => s.clone(),
                    other => other.to_string(),
                };
                Ok((ScalarExpr::Const(Datum::parse_text(&text, &ty)?), ty))
            }
            E::Interval(iv) => {
                let (x, _) = self.bind(&iv.value)?;
                let text = match x {
                    ScalarExpr::Const(Datum::String(s)) => s,
                    ScalarExpr::Const(Datum::Int(i)) => i.to_string(),
                    ScalarExpr::Const(Datum::Decimal(d)) => d.to_string(),
                    _ => return Err(unsupported_expr(e)),
                };
                let text = match &iv.leading_field {
                    Some(f) if !text.trim().contains(' ') && !text.contains(':') => {
                        format!("{text} {f}")
                    }
                    _ => text,
                };
                Ok((
                    ScalarExpr::Const(Datum::Interval(Interval::parse(&text)?)),
                    SqlType::Interval,
                ))
            }
            E::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let operand_b = match operand {
                    Some(o) => Some(self.bind(o)?),
                    None => None,
                };
                let mut whens = Vec::new();
                let mut result_ty = SqlType::Unknown;
                let mut results = Vec::new();
                for c in conditions {
                    let (cond, cty) = self.bind(&c.condition)?;
                    let cond = match &operand_b {
                        Some((_, oty)) => self.coerce_unknown_if(cond, cty, oty)?.0,
                        None => self.expect_bool(cond, cty, "CASE")?.0,
                    };
                    let (r, rty) = self.bind(&c.result)?;
                    if result_ty == SqlType::Unknown {
                        result_ty = rty.clone();
                    }
                    whens.push(cond);
                    results.push((r, rty));
                }
                let default = match else_result {
                    Some(x) => {
                        let (d, dty) = self.bind(x)?;
                        if result_ty == SqlType::Unknown {
                            result_ty = dty.clone();
                        }
                        Some((d, dty))
                    }
                    None => None,
                };
                let mut pairs = Vec::new();
                for (w, (r, rty)) in whens.into_iter().zip(results) {
                    let (r, _) = self.coerce_unknown_if(r, rty, &result_ty)?;
                    pairs.push((w, r));
                }
                let default = match default {
                    Some((d, dty)) => Some(Box::new(self.coerce_unknown_if(d, dty, &result_ty)?.0)),
                    None => None,
                };
                Ok((
                    ScalarExpr::Case {
                        operand: operand_b.map(|(o, _)| Box::new(o)),
                        whens: pairs,
                        default,
                    },
                    result_ty,
                ))
            }
            E::Function(f) => self.function(f),
            E::Extract { field, expr, .. } => {
                let (x, ty) = self.bind_typed(expr, &SqlType::TimestampTz)?;
                let field = ScalarExpr::Const(Datum::String(field.to_string().to_lowercase()));
                let _ = ty;
                Ok((
                    ScalarExpr::Func {
                        func: Builtin::DatePart,
                        args: vec![field, x],
                        ty: SqlType::Float8,
                    },
                    SqlType::Float8,
                ))
            }
            E::Ceil { expr, .. } => self.call("ceil", vec![expr.as_ref().clone()]),
            E::Floor { expr, .. } => self.call("floor", vec![expr.as_ref().clone()]),
            E::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                let mut args = vec![expr.as_ref().clone()];
                args.push(
                    substring_from
                        .as_deref()
                        .cloned()
                        .unwrap_or(sql::Expr::Value(
                            sql::Value::Number("1".into(), false).into(),
                        )),
                );
                if let Some(x) = substring_for {
                    args.push(x.as_ref().clone());
                }
                self.call("substr", args)
            }
            E::Trim {
                expr,
                trim_where,
                trim_what,
                ..
            } => {
                let name = match trim_where {
                    Some(sql::TrimWhereField::Leading) => "ltrim",
                    Some(sql::TrimWhereField::Trailing) => "rtrim",
                    _ => "btrim",
                };
                let mut args = vec![expr.as_ref().clone()];
                if let Some(w) = trim_what {
                    args.push(w.as_ref().clone());
                }
                self.call(name, args)
            }
            E::Position { expr, r#in } => {
                self.call("strpos", vec![r#in.as_ref().clone(), expr.as_ref().clone()])
            }
            E::Tuple(_) => Err(SqlError::unsupported("tuples")),
            _ => Err(unsupported_expr(e)),
        }
    }

    fn identifier(
        &mut self,
        qualifier: Option<&str>,
        id: &sql::Ident,
    ) -> Result<(ScalarExpr, SqlType)> {
        let name = normalize_ident(id);
        match self.scope.resolve(qualifier, &name) {
            Ok(idx) => Ok((ScalarExpr::Column(idx), self.scope.columns[idx].ty.clone())),
            Err(err) => {
                // Niladic functions written without parentheses.
                if id.quote_style.is_none() {
                    match name.as_str() {
                        "current_user" | "session_user" | "user" | "current_database"
                        | "current_schema" | "current_timestamp" | "localtimestamp"
                        | "current_date" => {
                            return self.call(&name, vec![]);
                        }
                        _ => {}
                    }
                }
                Err(err)
            }
        }
    }

    fn value(&mut self, v: &sql::Value) -> Result<(ScalarExpr, SqlType)> {
        use sql::Value as V;
        Ok(match v {
            V::Number(n, _) => {
                let d = number_literal(n)?;
                let ty = d.natural_type();
                (ScalarExpr::Const(d), ty)
            }
            V::SingleQuotedString(s)
            | V::EscapedStringLiteral(s)
            | V::NationalStringLiteral(s)
            | V::UnicodeStringLiteral(s) => (
                ScalarExpr::Const(Datum::String(s.clone())),
                SqlType::Unknown,
            ),
            V::DollarQuotedString(s) => (
                ScalarExpr::Const(Datum::String(s.value.clone())),
                SqlType::Unknown,
            ),
            V::SingleQuotedByteStringLiteral(s) | V::DoubleQuotedByteStringLiteral(s) => (
                ScalarExpr::Const(Datum::Bytes(unescape_bytes(s))),
                SqlType::Bytes,
            ),
            V::HexStringLiteral(h) => (
                ScalarExpr::Const(Datum::Bytes(
                    hex::decode(h).map_err(|_| SqlError::invalid_text(h, "bytes"))?,
                )),
                SqlType::Bytes,
            ),
            V::Boolean(b) => (ScalarExpr::Const(Datum::Bool(*b)), SqlType::Bool),
            V::Null => (ScalarExpr::Const(Datum::Null), SqlType::Unknown),
            V::Placeholder(p) => return self.param(p),
            V::DoubleQuotedString(s) => return Err(SqlError::undefined_column(s)),
            other => return Err(SqlError::unsupported(format!("literal {other}"))),
        })
    }

    fn coerce_unknown_if(
        &mut self,
        x: ScalarExpr,
        ty: SqlType,
        target: &SqlType,
    ) -> Result<(ScalarExpr, SqlType)> {
        if ty == SqlType::Unknown {
            self.coerce_unknown(x, target)
        } else {
            Ok((x, ty))
        }
    }

    fn expect_bool(
        &mut self,
        x: ScalarExpr,
        ty: SqlType,
        ctx: &str,
    ) -> Result<(ScalarExpr, SqlType)> {
        let (x, ty) = self.coerce_unknown_if(x, ty, &SqlType::Bool)?;
        if ty != SqlType::Bool && ty != SqlType::Unknown {
            return Err(SqlError::datatype_mismatch(format!(
                "argument of {ctx} must be type bool, not type {}",
                ty.family_name()
            )));
        }
        Ok((x, SqlType::Bool))
    }

    fn is_bool(
        &mut self,
        x: &sql::Expr,
        value: bool,
        negated: bool,
    ) -> Result<(ScalarExpr, SqlType)> {
        let (x, ty) = self.bind(x)?;
        let (x, _) = self.expect_bool(x, ty, "IS")?;
        Ok((
            ScalarExpr::IsBool {
                expr: Box::new(x),
                value,
                negated,
            },
            SqlType::Bool,
        ))
    }

    /// Binds two operands, giving an untyped one the other's type.
    fn bind_pair(
        &mut self,
        a: &sql::Expr,
        b: &sql::Expr,
    ) -> Result<(ScalarExpr, ScalarExpr, (SqlType, SqlType))> {
        let (x, xt) = self.bind(a)?;
        let (y, yt) = self.bind(b)?;
        let (x, xt) = if xt == SqlType::Unknown && yt != SqlType::Unknown {
            self.coerce_unknown(x, &yt)?
        } else {
            (x, xt)
        };
        let (y, yt) = if yt == SqlType::Unknown && xt != SqlType::Unknown {
            self.coerce_unknown(y, &xt)?
        } else {
            (y, yt)
        };
        Ok((x, y, (xt, yt)))
    }

    fn binary(
        &mut self,
        whole: &sql::Expr,
        left: &sql::Expr,
        op: &sql::BinaryOperator,
        right: &sql::Expr,
    ) -> Result<(ScalarExpr, SqlType)> {
        use sql::BinaryOperator as O;
        let bop = match op {
            O::Plus => BinOp::Add,
            O::Minus => BinOp::Sub,
            O::Multiply => BinOp::Mul,
            O::Divide => BinOp::Div,
            O::DuckIntegerDivide | O::MyIntegerDivide => BinOp::FloorDiv,
            O::Modulo => BinOp::Mod,
            O::StringConcat => BinOp::Concat,
            O::Eq => BinOp::Eq,
            O::NotEq => BinOp::NotEq,
            O::Lt => BinOp::Lt,
            O::LtEq => BinOp::LtEq,
            O::Gt => BinOp::Gt,
            O::GtEq => BinOp::GtEq,
            O::And => BinOp::And,
            O::Or => BinOp::Or,
            O::Arrow => BinOp::JsonGet,
            O::LongArrow => BinOp::JsonGetText,
            O::BitwiseAnd => BinOp::BitAnd,
            O::BitwiseOr => BinOp::BitOr,
            O::PGBitwiseXor | O::BitwiseXor => BinOp::BitXor,
            O::PGLikeMatch | O::PGILikeMatch | O::PGNotLikeMatch | O::PGNotILikeMatch => {
                let like = sql::Expr::Like {
                    negated: matches!(op, O::PGNotLikeMatch | O::PGNotILikeMatch),
                    any: false,
                    expr: Box::new(left.clone()),
                    pattern: Box::new(right.clone()),
                    escape_char: None,
                };
                let like = if matches!(op, O::PGILikeMatch | O::PGNotILikeMatch) {
                    match like {
                        sql::Expr::Like {
                            negated,
                            any,
                            expr,
                            pattern,
                            escape_char,
                        } => sql::Expr::ILike {
                            negated,
                            any,
                            expr,
                            pattern,
                            escape_char,
                        },
                        other => other,
                    }
                } else {
                    like
                };
                return self.bind(&like);
            }
            _ => return Err(unsupported_expr(whole)),
        };
        match bop {
            BinOp::And | BinOp::Or => {
                let (x, xt) = self.bind(left)?;
                let (x, _) =
                    self.expect_bool(x, xt, if bop == BinOp::And { "AND" } else { "OR" })?;
                let (y, yt) = self.bind(right)?;
                let (y, _) =
                    self.expect_bool(y, yt, if bop == BinOp::And { "AND" } else { "OR" })?;
                Ok((
                    ScalarExpr::Binary(bop, Box::new(x), Box::new(y)),
                    SqlType::Bool,
                ))
            }
            BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq => {
                let (x, y, (xt, yt)) = self.bind_pair(left, right)?;
                let (x, xt) = if xt == SqlType::Unknown {
                    self.coerce_unknown(x, &SqlType::String)?
                } else {
                    (x, xt)
                };
                let (y, yt) = if yt == SqlType::Unknown {
                    self.coerce_unknown(y, &SqlType::String)?
                } else {
                    (y, yt)
                };
                check_comparable(&xt, &yt, op_symbol(bop))?;
                Ok((
                    ScalarExpr::Binary(bop, Box::new(x), Box::new(y)),
                    SqlType::Bool,
                ))
            }
            BinOp::Concat => {
                let (x, xt) = self.bind(left)?;
                let (y, yt) = self.bind(right)?;
                let bytes = xt == SqlType::Bytes || yt == SqlType::Bytes;
                let jsonb = xt == SqlType::Jsonb && yt == SqlType::Jsonb;
                let target = if bytes {
                    SqlType::Bytes
                } else if jsonb {
                    SqlType::Jsonb
                } else {
                    SqlType::String
                };
                let (x, _) = self.coerce_unknown_if(x, xt, &target)?;
                let (y, _) = self.coerce_unknown_if(y, yt, &target)?;
                Ok((ScalarExpr::Binary(bop, Box::new(x), Box::new(y)), target))
            }
            BinOp::JsonGet | BinOp::JsonGetText => {
                let (x, xt) = self.bind_typed(left, &SqlType::Jsonb)?;
                if xt != SqlType::Jsonb {
                    return Err(SqlError::new(
                        sqlstate::UNDEFINED_FUNCTION,
                        format!(
                            "unsupported binary operator: <{}> {} <string>",
                            xt.family_name(),
                            op_symbol(bop)
                        ),
                    ));
                }
                let (y, yt) = self.bind(right)?;
                let (y, _) = self.coerce_unknown_if(y, yt, &SqlType::String)?;
                let ty = if bop == BinOp::JsonGet {
                    SqlType::Jsonb
                } else {
                    SqlType::String
                };
                Ok((ScalarExpr::Binary(bop, Box::new(x), Box::new(y)), ty))
            }
            _ => {
                let (x, xt) = self.bind(left)?;
                let (y, yt) = self.bind(right)?;
                // Untyped operands of arithmetic: take the other side's type, numbers default
                // to DECIMAL, intervals for timestamp arithmetic.
                let default_for = |other: &SqlType| -> SqlType {
                    match other.family() {
                        TypeFamily::Timestamp | TypeFamily::TimestampTz | TypeFamily::Date => {
                            SqlType::Interval
                        }
                        TypeFamily::Unknown => SqlType::DECIMAL,
                        _ => other.clone(),
                    }
                };
                let (x, xt) = if xt == SqlType::Unknown {
                    self.coerce_unknown(x, &default_for(&yt))?
                } else {
                    (x, xt)
                };
                let (y, yt) = if yt == SqlType::Unknown {
                    self.coerce_unknown(y, &default_for(&xt))?
                } else {
                    (y, yt)
                };
                let ty = arithmetic_type(bop, &xt, &yt)?;
                if let (ScalarExpr::Const(a), ScalarExpr::Const(b)) = (&x, &y) {
                    let v = eval_binary(bop, a.clone(), b.clone())?;
                    return Ok((ScalarExpr::Const(v), ty));
                }
                Ok((ScalarExpr::Binary(bop, Box::new(x), Box::new(y)), ty))
            }
        }
    }

    fn call(&mut self, name: &str, args: Vec<sql::Expr>) -> Result<(ScalarExpr, SqlType)> {
        let mut bound = Vec::with_capacity(args.len());
        for a in &args {
            bound.push(self.bind(a)?);
        }
        self.finish_call(name, bound)
    }

    fn function(&mut self, f: &sql::Function) -> Result<(ScalarExpr, SqlType)> {
        let name = function_name(&f.name);
        if is_aggregate_name(&name) {
            if self.agg.is_none() {
                return Err(SqlError::new(
                    sqlstate::GROUPING_ERROR,
                    format!("aggregate functions are not allowed in this context ({name})"),
                ));
            }
            return self.bind_aggregate(&name, f);
        }
        if f.over.is_some() {
            return Err(SqlError::unsupported("window functions"));
        }
        let mut bound = Vec::new();
        match &f.args {
            sql::FunctionArguments::None => {}
            sql::FunctionArguments::List(l) => {
                for a in &l.args {
                    match a {
                        sql::FunctionArg::Unnamed(sql::FunctionArgExpr::Expr(x)) => {
                            bound.push(self.bind(x)?)
                        }
                        other => {
                            return Err(SqlError::unsupported(format!(
                                "function argument {other}"
                            )));
                        }
                    }
                }
            }
            sql::FunctionArguments::Subquery(_) => {
                return Err(SqlError::unsupported(
                    "subqueries are not supported in this context",
                ));
            }
        }
        self.finish_call(&name, bound)
    }

    fn finish_call(
        &mut self,
        name: &str,
        mut args: Vec<(ScalarExpr, SqlType)>,
    ) -> Result<(ScalarExpr, SqlType)> {
        let n = args.len();
        let Some(func) = Builtin::lookup(name) else {
            return Err(SqlError::new(
                sqlstate::UNDEFINED_FUNCTION,
                format!("unknown function: {name}()"),
            ));
        };
        let def = func.def();
        if !def.arity.admits(n) {
            return Err(SqlError::new(
                sqlstate::UNDEFINED_FUNCTION,
                format!(
                    "unknown signature: {name}() with {n} argument{}",
                    if n == 1 { "" } else { "s" }
                ),
            ));
        }
        // Untyped arguments default to STRING (or the type of the other arguments).
        let first_typed = args
            .iter()
            .map(|(_, t)| t.clone())
            .find(|t| *t != SqlType::Unknown);
        let ty = match &def.typing {
            Typing::Returns(t) => t.clone(),
            Typing::Substring => {
                for a in args.iter_mut().skip(1) {
                    let (x, t) =
                        std::mem::replace(a, (ScalarExpr::Const(Datum::Null), SqlType::Unknown));
                    *a = self.coerce_unknown_if(x, t, &SqlType::Int8)?;
                }
                SqlType::String
            }
            Typing::CommonType => {
                let t = first_typed.clone().unwrap_or(SqlType::String);
                for a in args.iter_mut() {
                    let (x, at) =
                        std::mem::replace(a, (ScalarExpr::Const(Datum::Null), SqlType::Unknown));
                    *a = self.coerce_unknown_if(x, at, &t)?;
                    check_comparable(&t, &a.1, def.name)?;
                }
                // Mixed numerics widen: int with decimal → decimal.
                if args
                    .iter()
                    .any(|(_, at)| at.family() == TypeFamily::Decimal)
                    && t.family() == TypeFamily::Int
                {
                    SqlType::DECIMAL
                } else if args.iter().any(|(_, at)| at.family() == TypeFamily::Float)
                    && t.family() == TypeFamily::Int
                {
                    SqlType::Float8
                } else {
                    t
                }
            }
            Typing::Rounding => {
                let (x, t) = args.remove(0);
                let (x, t) = self.coerce_unknown_if(x, t, &SqlType::DECIMAL)?;
                if !t.is_numeric() {
                    return Err(unknown_signature(name, &[t]));
                }
                args.insert(0, (x, t.clone()));
                if n == 2 {
                    let (y, yt) = args.remove(1);
                    args.push(self.coerce_unknown_if(y, yt, &SqlType::Int8)?);
                }
                match (func, t.family()) {
                    (Builtin::Abs | Builtin::Sign, _) => t,
                    (_, TypeFamily::Int) if func != Builtin::Round || n == 1 => SqlType::Int8,
                    (_, TypeFamily::Float) => SqlType::Float8,
                    _ => SqlType::DECIMAL,
                }
            }
            Typing::Math => {
                for a in args.iter_mut() {
                    let (x, at) =
                        std::mem::replace(a, (ScalarExpr::Const(Datum::Null), SqlType::Unknown));
                    *a = self.coerce_unknown_if(x, at, &SqlType::DECIMAL)?;
                    if !a.1.is_numeric() {
                        return Err(unknown_signature(name, std::slice::from_ref(&a.1)));
                    }
                }
                if func == Builtin::Mod && args.iter().all(|(_, t)| t.family() == TypeFamily::Int) {
                    SqlType::Int8
                } else if args.iter().any(|(_, t)| t.family() == TypeFamily::Float) {
                    SqlType::Float8
                } else {
                    SqlType::DECIMAL
                }
            }
            Typing::TypeName => {
                let t = args[0].1.clone();
                return Ok((
                    ScalarExpr::Const(Datum::String(pg_type_name(&t))),
                    SqlType::String,
                ));
            }
            Typing::DatePart => {
                let (x, t) = args.remove(1);
                args.push(self.coerce_unknown_if(x, t, &SqlType::TimestampTz)?);
                SqlType::Float8
            }
            Typing::DateTrunc => {
                let (x, t) = args.remove(1);
                let (x, t) = self.coerce_unknown_if(x, t, &SqlType::TimestampTz)?;
                let out = if t.family() == TypeFamily::Date {
                    SqlType::TimestampTz
                } else {
                    t.clone()
                };
                args.push((x, t));
                out
            }
        };
        // Remaining untyped arguments are strings.
        let mut exprs = Vec::with_capacity(args.len());
        for (x, t) in args {
            exprs.push(self.coerce_unknown_if(x, t, &SqlType::String)?.0);
        }
        Ok((
            ScalarExpr::Func {
                func,
                args: exprs,
                ty: ty.clone(),
            },
            ty,
        ))
    }
}
