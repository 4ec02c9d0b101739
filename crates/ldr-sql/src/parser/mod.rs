//! Parsing SQL text into [`Statement`]s.
//!
//! sqlparser (PostgreSQL dialect) tokenizes everything and parses standard queries, DML and
//! expressions; statements that are CockroachDB's own (UPSERT, SHOW …, SET CLUSTER SETTING,
//! GRANT SYSTEM, CREATE LOGICAL REPLICATION STREAM, …) and all DDL (which in CockroachDB has
//! inline `INDEX`, `STORING`, `USING HASH`, …) are recognized by their leading keywords and
//! parsed by hand on top of sqlparser's token stream. Syntax errors are 42601 with
//! CockroachDB's `at or near "x": syntax error` message.

pub mod ast;
mod backup;
mod changefeed;
mod depth;

pub use depth::MAX_EXPR_DEPTH;
use sqlparser::ast as sql;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token};

pub use ast::*;

use crate::error::{Result, SqlError};

/// How many nested calls sqlparser may make (its default is 50, which refuses `((…))` 26
/// levels deep). It grows its own stack as it recurses; the trees it returns are bounded by
/// [`MAX_EXPR_DEPTH`] separately.
const PARSER_RECURSION_LIMIT: usize = 256;

/// Stack per tree level for dropping (or cloning) a refused deep tree: a debug build's derived
/// `Clone` of sqlparser's `Expr` takes about 4 KiB a level; `Drop` less. The most such a stack
/// may have (virtual memory: only what the drop touches is used).
const DROP_STACK_BYTES_PER_LEVEL: usize = 4 << 10;
const DROP_STACK_BYTES_MAX: usize = 1 << 30;

/// Runs `f` (a parse of `text`) where a refused tree can be dropped: a tree is at most one
/// level per byte of text deep, so a text longer than [`MAX_EXPR_DEPTH`] may parse into a tree
/// too deep to drop on a worker's stack (`Drop` recurses). It runs on a stack sized for that.
fn on_stack_for<T>(text: &str, f: impl FnOnce() -> T) -> T {
    if text.len() <= MAX_EXPR_DEPTH {
        return f();
    }
    let bytes = text
        .len()
        .saturating_mul(DROP_STACK_BYTES_PER_LEVEL)
        .saturating_add(1 << 20)
        .min(DROP_STACK_BYTES_MAX);
    stacker::maybe_grow(bytes, bytes, f)
}

fn new_parser<'a>(dialect: &'a PostgreSqlDialect, text: &str) -> Result<Parser<'a>> {
    Parser::new(dialect)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .try_with_sql(text)
        .map_err(convert_error)
}

/// Parses a query string that may hold several statements separated by semicolons.
/// Statements holding a tree deeper than [`MAX_EXPR_DEPTH`] fail with 54001.
pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    on_stack_for(sql, || parse_statements(sql))
}

fn parse_statements(sql: &str) -> Result<Vec<Statement>> {
    let (sql, show_texts) = extract_show_sources(sql);
    let mut shows = Vec::with_capacity(show_texts.len());
    for t in &show_texts {
        shows.push(parse_one(t)?);
    }
    let original = rewrite_typed_annotations(&sql);
    let (text, mut as_ofs) = backup::extract_as_of(&original)?;
    let dialect = PostgreSqlDialect {};
    let parser = new_parser(&dialect, &text)?;
    let mut p = P {
        p: parser,
        sql: &text,
    };
    let mut out = Vec::new();
    loop {
        while p.p.consume_token(&Token::SemiColon) {}
        if p.peek_is(&Token::EOF) {
            break;
        }
        let start = p.offset_here();
        let mut stmt = p.statement()?;
        depth::check_statement(&stmt)?;
        if !shows.is_empty()
            && let Statement::Select(q) = stmt
        {
            stmt = Statement::SelectFromShow {
                query: q,
                shows: shows.clone(),
            };
        }
        let end = p.offset_here();
        if let Statement::CreateLogicalReplicationStream(s) = &mut stmt {
            s.statement = text[start..end.max(start)]
                .trim()
                .trim_end_matches(';')
                .trim()
                .to_string();
        }
        if let Statement::CreateChangefeed(s) = &mut stmt {
            s.statement = text[start..end.max(start)]
                .trim()
                .trim_end_matches(';')
                .trim()
                .to_string();
        }
        // The statement's text as written (its AS OF SYSTEM TIME clause included).
        let written = original
            .get(start..end.max(start))
            .unwrap_or_default()
            .trim()
            .trim_end_matches(';')
            .trim()
            .to_string();
        match &mut stmt {
            Statement::Backup(b) => b.statement = written,
            Statement::Restore(r) => r.statement = written,
            _ => {}
        }
        while let Some(found) = as_ofs.first() {
            if found.offset >= end.max(start) && !p.peek_is(&Token::EOF) {
                break;
            }
            let found = as_ofs.remove(0);
            stmt = backup::attach_as_of(stmt, found.as_of)?;
        }
        out.push(stmt);
        if !p.p.consume_token(&Token::SemiColon) && !p.peek_is(&Token::EOF) {
            return Err(p.unexpected());
        }
    }
    Ok(out)
}

/// Parses exactly one statement.
pub fn parse_one(sql: &str) -> Result<Statement> {
    let mut v = parse(sql)?;
    match v.len() {
        1 => Ok(v.remove(0)),
        0 => Err(SqlError::syntax("EOF")),
        _ => Err(SqlError::new(
            crate::error::sqlstate::SYNTAX_ERROR,
            "expected exactly one statement",
        )),
    }
}

/// Parses one expression (stored DEFAULT and CHECK expressions).
pub fn parse_expr(text: &str) -> Result<Expr> {
    on_stack_for(text, || {
        let text = rewrite_typed_annotations(text);
        let dialect = PostgreSqlDialect {};
        let mut parser = new_parser(&dialect, &text)?;
        let e = parser.parse_expr().map_err(convert_error)?;
        if parser.peek_token().token != Token::EOF {
            let t = parser.peek_token().token.to_string();
            return Err(SqlError::syntax(&t));
        }
        depth::check_expr(&e)?;
        Ok(e)
    })
}

/// The name a `[SHOW …]` source is rewritten to.
pub const SHOW_SOURCE_PREFIX: &str = "__crdb_show_";

/// Replaces CockroachDB's `[SHOW …]` table sources (outside strings and comments) with
/// `__crdb_show_<i>`, returning the SHOW texts.
fn extract_show_sources(sql: &str) -> (String, Vec<String>) {
    if !sql.contains('[') {
        return (sql.to_string(), vec![]);
    }
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut shows = Vec::new();
    let mut i = 0;
    // Copies a quoted run starting at `i`, returning the index after it.
    let skip_quoted = |i: usize| -> usize {
        let q = b[i];
        let mut j = i + 1;
        while j < b.len() {
            if b[j] == q {
                if j + 1 < b.len() && b[j + 1] == q {
                    j += 2;
                    continue;
                }
                return j + 1;
            }
            j += 1;
        }
        b.len()
    };
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let end = skip_quoted(i);
                out.push_str(&sql[i..end]);
                i = end;
            }
            b'[' => {
                let rest = sql[i + 1..].trim_start();
                // `get`, not `[..4]`: the fifth byte may sit inside a multi-byte character.
                if rest
                    .get(..4)
                    .is_some_and(|w| w.eq_ignore_ascii_case("show"))
                {
                    // Find the matching bracket.
                    let mut depth = 0;
                    let mut j = i;
                    let mut end = None;
                    while j < b.len() {
                        match b[j] {
                            b'\'' | b'"' => {
                                j = skip_quoted(j);
                                continue;
                            }
                            b'[' => depth += 1,
                            b']' => {
                                depth -= 1;
                                if depth == 0 {
                                    end = Some(j);
                                    break;
                                }
                            }
                            _ => {}
                        }
                        j += 1;
                    }
                    if let Some(end) = end {
                        out.push_str(&format!("{SHOW_SOURCE_PREFIX}{}", shows.len()));
                        shows.push(sql[i + 1..end].to_string());
                        i = end + 1;
                        continue;
                    }
                }
                out.push('[');
                i += 1;
            }
            c => {
                let len = utf8_len(c);
                out.push_str(&sql[i..(i + len).min(b.len())]);
                i += len;
            }
        }
    }
    (out, shows)
}

/// CockroachDB's `x:::TYPE` type annotation means the same as a cast for us; sqlparser does
/// not know it, so rewrite `:::` to `::` outside strings, identifiers and comments.
fn rewrite_typed_annotations(sql: &str) -> String {
    if !sql.contains(":::") {
        return sql.to_string();
    }
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' | b'"' => {
                let start = i;
                i += 1;
                while i < b.len() {
                    if b[i] == c {
                        if i + 1 < b.len() && b[i + 1] == c {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i = (i + 1).min(b.len());
                out.push_str(&sql[start..i]);
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let start = i;
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                out.push_str(&sql[start..i]);
            }
            b':' if b.get(i + 1) == Some(&b':') && b.get(i + 2) == Some(&b':') => {
                out.push_str("::");
                i += 3;
            }
            _ => {
                let ch_len = utf8_len(c);
                out.push_str(&sql[i..(i + ch_len).min(b.len())]);
                i += ch_len;
            }
        }
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Maps a sqlparser error to 42601 `at or near "x": syntax error`.
pub(crate) fn convert_error(e: ParserError) -> SqlError {
    let msg = match &e {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m.clone(),
        ParserError::RecursionLimitExceeded => {
            return crate::stack::stack_depth_error().with_detail(format!(
                "the statement nests more than {PARSER_RECURSION_LIMIT} levels deep"
            ));
        }
    };
    let near = msg
        .split_once("found: ")
        .map(|(_, rest)| match rest.rfind(" at Line:") {
            Some(i) => rest[..i].to_string(),
            None => rest.to_string(),
        })
        .unwrap_or_else(|| "EOF".to_string());
    SqlError::syntax(&near).with_detail(format!("source SQL parser: {msg}"))
}

fn normalize(ident: &sql::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

pub(crate) fn object_name(name: &sql::ObjectName) -> Result<ObjectName> {
    name.0
        .iter()
        .map(|part| match part {
            sql::ObjectNamePart::Identifier(i) => Ok(normalize(i)),
            other => Err(SqlError::unsupported(format!("name {other}"))),
        })
        .collect()
}

struct P<'a> {
    p: Parser<'a>,
    sql: &'a str,
}

impl<'a> P<'a> {
    fn offset_of(&self, loc: Location) -> usize {
        if loc.line == 0 {
            return self.sql.len();
        }
        let mut line = 1u64;
        let mut col = 1u64;
        for (i, ch) in self.sql.char_indices() {
            if line == loc.line && col == loc.column {
                return i;
            }
            if ch == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
        self.sql.len()
    }

    fn offset_here(&self) -> usize {
        let t = self.p.peek_token();
        if t.token == Token::EOF {
            self.sql.len()
        } else {
            self.offset_of(t.span.start)
        }
    }

    fn peek_is(&self, t: &Token) -> bool {
        &self.p.peek_token().token == t
    }

    /// The `n`th next token as an unquoted upper-case word.
    fn word_at(&self, n: usize) -> Option<String> {
        match self.p.peek_nth_token(n).token {
            Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
            _ => None,
        }
    }

    fn peek_word(&self) -> Option<String> {
        self.word_at(0)
    }

    fn eat(&mut self, word: &str) -> bool {
        if self.peek_word().as_deref() == Some(word) {
            self.p.next_token();
            true
        } else {
            false
        }
    }

    /// Consumes the words only if all of them come next.
    fn eat_seq(&mut self, words: &[&str]) -> bool {
        for (i, w) in words.iter().enumerate() {
            if self.word_at(i).as_deref() != Some(*w) {
                return false;
            }
        }
        for _ in words {
            self.p.next_token();
        }
        true
    }

    fn unexpected(&self) -> SqlError {
        let t = self.p.peek_token().token;
        let near = match t {
            Token::EOF => "EOF".to_string(),
            Token::SingleQuotedString(s) => format!("'{s}'"),
            other => other.to_string(),
        };
        SqlError::syntax(&near)
    }

    fn expect(&mut self, word: &str) -> Result<()> {
        if self.eat(word) {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn expect_token(&mut self, t: &Token) -> Result<()> {
        if self.p.consume_token(t) {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn ident(&mut self) -> Result<String> {
        match self.p.peek_token().token {
            Token::Word(_) => {
                let i = self.p.parse_identifier().map_err(convert_error)?;
                Ok(normalize(&i))
            }
            _ => Err(self.unexpected()),
        }
    }

    fn name(&mut self) -> Result<ObjectName> {
        let mut parts = vec![self.ident()?];
        while self.p.consume_token(&Token::Period) {
            parts.push(self.ident()?);
        }
        Ok(parts)
    }

    fn name_list(&mut self) -> Result<Vec<ObjectName>> {
        let mut v = vec![self.name()?];
        while self.p.consume_token(&Token::Comma) {
            v.push(self.name()?);
        }
        Ok(v)
    }

    fn ident_list(&mut self) -> Result<Vec<String>> {
        let mut v = vec![self.ident()?];
        while self.p.consume_token(&Token::Comma) {
            v.push(self.ident()?);
        }
        Ok(v)
    }

    fn paren_ident_list(&mut self) -> Result<Vec<String>> {
        self.expect_token(&Token::LParen)?;
        let v = self.ident_list()?;
        self.expect_token(&Token::RParen)?;
        Ok(v)
    }

    fn string(&mut self) -> Result<String> {
        match self.p.peek_token().token {
            Token::SingleQuotedString(s) | Token::EscapedStringLiteral(s) => {
                self.p.next_token();
                Ok(s)
            }
            Token::DollarQuotedString(s) => {
                self.p.next_token();
                Ok(s.value)
            }
            _ => Err(self.unexpected()),
        }
    }

    fn expr(&mut self) -> Result<Expr> {
        self.p.parse_expr().map_err(convert_error)
    }

    fn if_not_exists(&mut self) -> bool {
        self.eat_seq(&["IF", "NOT", "EXISTS"])
    }

    fn if_exists(&mut self) -> bool {
        self.eat_seq(&["IF", "EXISTS"])
    }

    /// A dotted setting or variable name (`kv.rangefeed.enabled`, `application_name`).
    fn setting_name(&mut self) -> Result<String> {
        let mut parts = vec![self.ident()?];
        while self.p.consume_token(&Token::Period) {
            parts.push(self.ident()?);
        }
        Ok(parts.join("."))
    }

    /// `USING key = value [, …]` or `DISCARD` after `CONFIGURE ZONE`: keys lowercased,
    /// values as their text (`COPY FROM PARENT` included).
    fn zone_options(&mut self) -> Result<Vec<(String, String)>> {
        if self.eat("DISCARD") {
            return Ok(Vec::new());
        }
        self.expect("USING")?;
        let mut options = Vec::new();
        loop {
            let key = self.setting_name()?.to_lowercase();
            self.expect_token(&Token::Eq)?;
            let value = if self.eat_seq(&["COPY", "FROM", "PARENT"]) {
                "COPY FROM PARENT".to_string()
            } else {
                let mut parts = Vec::new();
                let mut depth = 0usize;
                loop {
                    let t = self.p.peek_token().token;
                    match t {
                        Token::EOF | Token::SemiColon => break,
                        Token::Comma if depth == 0 => break,
                        Token::LParen | Token::LBracket => depth += 1,
                        Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
                        _ => {}
                    }
                    parts.push(match &t {
                        Token::SingleQuotedString(v) => v.clone(),
                        other => other.to_string(),
                    });
                    self.p.next_token();
                }
                if parts.is_empty() {
                    return Err(self.unexpected());
                }
                parts.concat()
            };
            options.push((key, value));
            if !self.p.consume_token(&Token::Comma) {
                break;
            }
        }
        Ok(options)
    }

    fn statement(&mut self) -> Result<Statement> {
        let Some(first) = self.peek_word() else {
            if self.peek_is(&Token::LParen) {
                return self.standard();
            }
            return Err(self.unexpected());
        };
        match first.as_str() {
            "SELECT" | "WITH" | "VALUES" | "INSERT" | "UPDATE" | "DELETE" | "TABLE" => {
                self.standard()
            }
            "UPSERT" => self.upsert(),
            "CREATE" => self.create(),
            "DROP" => self.drop(),
            "ALTER" => self.alter(),
            "TRUNCATE" => {
                self.p.next_token();
                self.eat("TABLE");
                let tables = self.name_list()?;
                self.eat("CASCADE");
                Ok(Statement::Truncate { tables })
            }
            "BEGIN" | "START" => {
                self.p.next_token();
                self.eat("TRANSACTION");
                self.eat("WORK");
                self.skip_transaction_modes();
                Ok(Statement::Begin)
            }
            "COMMIT" | "END" => {
                self.p.next_token();
                self.eat("TRANSACTION");
                self.eat("WORK");
                Ok(Statement::Commit)
            }
            "ROLLBACK" | "ABORT" => {
                self.p.next_token();
                self.eat("TRANSACTION");
                self.eat("WORK");
                if self.eat("TO") {
                    self.eat("SAVEPOINT");
                    return Ok(Statement::RollbackToSavepoint(self.ident()?));
                }
                Ok(Statement::Rollback)
            }
            "SAVEPOINT" => {
                self.p.next_token();
                Ok(Statement::Savepoint(self.ident()?))
            }
            "RELEASE" => {
                self.p.next_token();
                self.eat("SAVEPOINT");
                Ok(Statement::ReleaseSavepoint(self.ident()?))
            }
            "SET" => self.set(),
            "RESET" => {
                self.p.next_token();
                if self.eat_seq(&["CLUSTER", "SETTING"]) {
                    return Ok(Statement::SetClusterSetting {
                        name: self.setting_name()?,
                        value: None,
                    });
                }
                if self.eat("ALL") {
                    return Ok(Statement::ResetAll);
                }
                Ok(Statement::ResetVar(self.setting_name()?))
            }
            "SHOW" if matches!(self.word_at(1).as_deref(), Some("BACKUP" | "BACKUPS")) => {
                self.p.next_token();
                self.show_backup()
            }
            "SHOW" => self.show(),
            "BACKUP" => self.backup(),
            "RESTORE" => self.restore(),
            "USE" => {
                self.p.next_token();
                Ok(Statement::Use(self.ident()?))
            }
            "PAUSE" | "RESUME" | "CANCEL" => {
                self.p.next_token();
                if self.eat("JOBS") {
                    return Err(SqlError::unsupported(format!("{} JOBS", first)));
                }
                self.expect("JOB")?;
                let e = self.expr()?;
                Ok(match first.as_str() {
                    "PAUSE" => Statement::PauseJob(e),
                    "RESUME" => Statement::ResumeJob(e),
                    _ => Statement::CancelJob(e),
                })
            }
            "GRANT" => self.grant(true),
            "REVOKE" => self.grant(false),
            "EXPLAIN" | "PREPARE" | "EXECUTE" | "DEALLOCATE" | "COPY" | "COMMENT" | "IMPORT"
            | "EXPORT" | "DECLARE" | "FETCH" | "CLOSE" | "LISTEN" | "NOTIFY" | "ANALYZE"
            | "VACUUM" | "LOCK" | "DISCARD" | "CALL" | "DO" | "REFRESH" | "RENAME" | "SCRUB"
            | "SPLIT" | "UNSPLIT" => {
                Err(SqlError::unsupported(format!("{} is not supported", first)))
            }
            _ => Err(self.unexpected()),
        }
    }

    fn skip_transaction_modes(&mut self) {
        loop {
            if self.eat_seq(&["ISOLATION", "LEVEL"]) {
                while let Some(w) = self.peek_word() {
                    if matches!(
                        w.as_str(),
                        "SERIALIZABLE"
                            | "READ"
                            | "COMMITTED"
                            | "UNCOMMITTED"
                            | "REPEATABLE"
                            | "SNAPSHOT"
                    ) {
                        self.p.next_token();
                    } else {
                        break;
                    }
                }
            } else if self.eat_seq(&["READ", "WRITE"])
                || self.eat_seq(&["READ", "ONLY"])
                || self.eat("DEFERRABLE")
            {
            } else if self.eat_seq(&["NOT", "DEFERRABLE"]) || self.eat_seq(&["PRIORITY"]) {
                self.p.next_token();
            } else if !self.p.consume_token(&Token::Comma) {
                break;
            }
        }
    }

    // ---- standard DML through sqlparser ----

    fn standard(&mut self) -> Result<Statement> {
        let st = self.p.parse_statement().map_err(convert_error)?;
        convert_standard(st)
    }

    fn upsert(&mut self) -> Result<Statement> {
        self.expect("UPSERT")?;
        self.expect("INTO")?;
        let table = self.name()?;
        let alias = if self.eat("AS") {
            Some(self.ident()?)
        } else {
            None
        };
        let mut columns = Vec::new();
        // A parenthesized column list, unless it is a parenthesized query.
        if self.peek_is(&Token::LParen)
            && !matches!(
                self.word_at(1).as_deref(),
                Some("SELECT" | "VALUES" | "WITH")
            )
        {
            columns = self.paren_ident_list()?;
        }
        let source = if self.eat_seq(&["DEFAULT", "VALUES"]) {
            InsertSource::DefaultValues
        } else {
            let q = self.p.parse_query().map_err(convert_error)?;
            query_to_source(q)
        };
        let returning = self.returning()?;
        Ok(Statement::Insert(InsertStmt {
            table,
            alias,
            columns,
            source,
            on_conflict: None,
            returning,
            upsert: true,
        }))
    }

    fn returning(&mut self) -> Result<Option<Vec<SelectItem>>> {
        if self.eat("RETURNING") {
            if self.eat("NOTHING") {
                return Ok(None);
            }
            let items = self.p.parse_projection().map_err(convert_error)?;
            Ok(Some(items))
        } else {
            Ok(None)
        }
    }

    // ---- SET / SHOW ----

    fn set(&mut self) -> Result<Statement> {
        self.expect("SET")?;
        if self.eat_seq(&["CLUSTER", "SETTING"]) {
            let name = self.setting_name()?;
            if !self.p.consume_token(&Token::Eq) {
                self.expect("TO")?;
            }
            if self.eat("DEFAULT") {
                return Ok(Statement::SetClusterSetting { name, value: None });
            }
            let value = self.expr()?;
            return Ok(Statement::SetClusterSetting {
                name,
                value: Some(value),
            });
        }
        if self.eat("TRANSACTION")
            || self.eat_seq(&["SESSION", "CHARACTERISTICS", "AS", "TRANSACTION"])
        {
            self.skip_transaction_modes();
            return Ok(Statement::SetTransaction);
        }
        self.eat("SESSION");
        self.eat("LOCAL");
        let name = if self.eat_seq(&["TIME", "ZONE"]) {
            "timezone".to_string()
        } else {
            let n = self.setting_name()?;
            if !self.p.consume_token(&Token::Eq) {
                self.expect("TO")?;
            }
            n
        };
        if self.eat("DEFAULT") {
            return Ok(Statement::SetVar { name, value: None });
        }
        let mut values = vec![self.set_value()?];
        while self.p.consume_token(&Token::Comma) {
            values.push(self.set_value()?);
        }
        Ok(Statement::SetVar {
            name,
            value: Some(values),
        })
    }

    /// A SET value: a literal, or a bare word (`SET search_path = public`).
    fn set_value(&mut self) -> Result<Expr> {
        if let Token::Word(w) = self.p.peek_token().token
            && !matches!(
                w.value.to_ascii_uppercase().as_str(),
                "TRUE" | "FALSE" | "NULL" | "INTERVAL"
            )
        {
            self.p.next_token();
            let mut s = w.value.clone();
            while self.p.consume_token(&Token::Period) {
                s.push('.');
                s.push_str(&self.ident()?);
            }
            return Ok(Expr::Value(sql::Value::SingleQuotedString(s).into()));
        }
        self.expr()
    }

    fn show(&mut self) -> Result<Statement> {
        self.expect("SHOW")?;
        let w = self.peek_word().ok_or_else(|| self.unexpected())?;
        match w.as_str() {
            "DATABASES" => {
                self.p.next_token();
                Ok(Statement::ShowDatabases)
            }
            "SCHEMAS" => {
                self.p.next_token();
                let database = if self.eat("FROM") {
                    Some(self.ident()?)
                } else {
                    None
                };
                Ok(Statement::ShowSchemas { database })
            }
            "TABLES" => {
                self.p.next_token();
                let from = if self.eat("FROM") {
                    Some(self.name()?)
                } else {
                    None
                };
                Ok(Statement::ShowTables { from })
            }
            "CREATE" => {
                self.p.next_token();
                if self.eat_seq(&["EXTERNAL", "CONNECTION"]) {
                    return Ok(Statement::ShowExternalConnections {
                        name: Some(self.ident()?),
                    });
                }
                self.eat("TABLE");
                Ok(Statement::ShowCreateTable(self.name()?))
            }
            "COLUMNS" => {
                self.p.next_token();
                self.expect("FROM")?;
                Ok(Statement::ShowColumns(self.name()?))
            }
            "INDEX" | "INDEXES" | "KEYS" => {
                self.p.next_token();
                self.expect("FROM")?;
                Ok(Statement::ShowIndexes(self.name()?))
            }
            "CONSTRAINT" | "CONSTRAINTS" => {
                self.p.next_token();
                self.expect("FROM")?;
                Ok(Statement::ShowConstraints(self.name()?))
            }
            "RANGES" => {
                self.p.next_token();
                if !self.eat("FROM") {
                    return Ok(Statement::ShowRanges(RangesFrom::Database(None)));
                }
                if self.eat("DATABASE") {
                    return Ok(Statement::ShowRanges(RangesFrom::Database(Some(
                        self.ident()?,
                    ))));
                }
                self.expect("TABLE")?;
                Ok(Statement::ShowRanges(RangesFrom::Table(self.name()?)))
            }
            "EXPERIMENTAL_FINGERPRINTS" => {
                self.p.next_token();
                self.expect("FROM")?;
                self.expect("TABLE")?;
                Ok(Statement::ShowFingerprints(self.name()?))
            }
            "JOBS" => {
                self.p.next_token();
                Ok(Statement::ShowJobs)
            }
            "TRANSACTIONS" => {
                self.p.next_token();
                Ok(Statement::ShowTransactions)
            }
            "LOCAL" if matches!(self.word_at(1).as_deref(), Some("TRANSACTIONS")) => {
                self.p.next_token();
                self.p.next_token();
                Ok(Statement::ShowTransactions)
            }
            "JOB" => {
                self.p.next_token();
                Ok(Statement::ShowJob(self.expr()?))
            }
            "CHANGEFEED" => {
                self.p.next_token();
                if self.eat("JOBS") {
                    return Ok(Statement::ShowChangefeedJobs(None));
                }
                self.expect("JOB")?;
                Ok(Statement::ShowChangefeedJobs(Some(self.expr()?)))
            }
            "LOGICAL" => {
                self.p.next_token();
                self.expect("REPLICATION")?;
                self.expect("JOBS")?;
                let with_details = self.eat_seq(&["WITH", "DETAILS"]);
                Ok(Statement::ShowLogicalReplicationJobs { with_details })
            }
            "CLUSTER" => {
                self.p.next_token();
                if self.eat("RANGES") {
                    return Ok(Statement::ShowRanges(RangesFrom::Cluster));
                }
                if self.eat("SETTINGS") {
                    return Ok(Statement::ShowClusterSettings);
                }
                if self.eat("TRANSACTIONS") {
                    return Err(SqlError::unsupported(
                        "SHOW CLUSTER TRANSACTIONS (use SHOW LOCAL TRANSACTIONS on each node)",
                    ));
                }
                self.expect("SETTING")?;
                Ok(Statement::ShowClusterSetting(self.setting_name()?))
            }
            "ALL" | "PUBLIC" if matches!(self.word_at(1).as_deref(), Some("CLUSTER")) => {
                self.p.next_token();
                self.p.next_token();
                self.expect("SETTINGS")?;
                Ok(Statement::ShowClusterSettings)
            }
            "ALL" => {
                self.p.next_token();
                Ok(Statement::ShowAllVars)
            }
            "USERS" | "ROLES" => {
                self.p.next_token();
                Ok(Statement::ShowUsers)
            }
            "GRANTS" => {
                self.p.next_token();
                let mut table = None;
                if self.eat("ON") {
                    self.eat("TABLE");
                    table = Some(self.name()?);
                }
                let users = if self.eat("FOR") {
                    self.ident_list()?
                } else {
                    vec![]
                };
                Ok(Statement::ShowGrants { table, users })
            }
            "SYSTEM" => {
                self.p.next_token();
                self.expect("GRANTS")?;
                let users = if self.eat("FOR") {
                    self.ident_list()?
                } else {
                    vec![]
                };
                Ok(Statement::ShowSystemGrants { users })
            }
            "EXTERNAL" => {
                self.p.next_token();
                if self.eat("CONNECTIONS") {
                    return Ok(Statement::ShowExternalConnections { name: None });
                }
                self.expect("CONNECTION")?;
                Ok(Statement::ShowExternalConnections {
                    name: Some(self.ident()?),
                })
            }
            "TIME" => {
                self.p.next_token();
                self.expect("ZONE")?;
                Ok(Statement::ShowVar("timezone".into()))
            }
            "TRANSACTION" => {
                self.p.next_token();
                if self.eat_seq(&["ISOLATION", "LEVEL"]) {
                    return Ok(Statement::ShowVar("transaction_isolation".into()));
                }
                if self.eat("STATUS") {
                    return Ok(Statement::ShowVar("transaction_status".into()));
                }
                Ok(Statement::ShowVar(self.setting_name()?))
            }
            _ => Ok(Statement::ShowVar(self.setting_name()?)),
        }
    }

    // ---- GRANT / REVOKE ----

    fn privilege_list(&mut self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        loop {
            let w = self.peek_word().ok_or_else(|| self.unexpected())?;
            self.p.next_token();
            if w == "ALL" {
                self.eat("PRIVILEGES");
            }
            v.push(w);
            if !self.p.consume_token(&Token::Comma) {
                break;
            }
        }
        Ok(v)
    }

    fn grant(&mut self, grant: bool) -> Result<Statement> {
        self.p.next_token();
        let to_from = if grant { "TO" } else { "FROM" };
        if self.eat("SYSTEM") {
            let privileges = self.privilege_list()?;
            self.expect(to_from)?;
            let users = self.ident_list()?;
            self.eat_seq(&["WITH", "GRANT", "OPTION"]);
            return Ok(if grant {
                Statement::GrantSystem { privileges, users }
            } else {
                Statement::RevokeSystem { privileges, users }
            });
        }
        // GRANT role TO user: no ON clause.
        let save_roles = self.peek_word();
        let privileges = self.privilege_list()?;
        if self.eat("ON") {
            if self.eat("DATABASE") {
                let databases = self.ident_list()?;
                self.expect(to_from)?;
                let users = self.ident_list()?;
                self.eat_seq(&["WITH", "GRANT", "OPTION"]);
                return Ok(if grant {
                    Statement::GrantDatabase {
                        privileges,
                        databases,
                        users,
                    }
                } else {
                    Statement::RevokeDatabase {
                        privileges,
                        databases,
                        users,
                    }
                });
            }
            if self.eat("SCHEMA") {
                let _ = self.name_list()?;
                self.expect(to_from)?;
                let _ = self.ident_list()?;
                return Ok(Statement::NoOp {
                    tag: if grant { "GRANT" } else { "REVOKE" }.into(),
                });
            }
            self.eat("TABLE");
            let tables = self.name_list()?;
            self.expect(to_from)?;
            let users = self.ident_list()?;
            self.eat_seq(&["WITH", "GRANT", "OPTION"]);
            return Ok(if grant {
                Statement::GrantTable {
                    privileges,
                    tables,
                    users,
                }
            } else {
                Statement::RevokeTable {
                    privileges,
                    tables,
                    users,
                }
            });
        }
        let _ = save_roles;
        self.expect(to_from)?;
        let users = self.ident_list()?;
        self.eat_seq(&["WITH", "ADMIN", "OPTION"]);
        let roles = privileges.into_iter().map(|r| r.to_lowercase()).collect();
        Ok(if grant {
            Statement::GrantRole { roles, users }
        } else {
            Statement::RevokeRole { roles, users }
        })
    }

    // ---- CREATE ----

    fn create(&mut self) -> Result<Statement> {
        self.expect("CREATE")?;
        if self.eat("DATABASE") {
            let if_not_exists = self.if_not_exists();
            let name = self.ident()?;
            // Options such as ENCODING = 'UTF8' are accepted and ignored.
            while !self.peek_is(&Token::EOF) && !self.peek_is(&Token::SemiColon) {
                self.p.next_token();
            }
            return Ok(Statement::CreateDatabase {
                name,
                if_not_exists,
            });
        }
        if self.eat("SCHEMA") {
            let if_not_exists = self.if_not_exists();
            let name = self.name()?;
            return Ok(Statement::CreateSchema {
                name,
                if_not_exists,
            });
        }
        if self.eat("TABLE") {
            return self.create_table();
        }
        if self.eat_seq(&["UNIQUE", "INDEX"]) {
            return self.create_index(true);
        }
        if self.eat("INDEX") {
            return self.create_index(false);
        }
        if self.eat("USER") || self.eat("ROLE") {
            let if_not_exists = self.if_not_exists();
            let mut spec = self.user_spec()?;
            spec.if_not_exists = if_not_exists;
            return Ok(Statement::CreateUser(spec));
        }
        if self.eat_seq(&["EXTERNAL", "CONNECTION"]) {
            let if_not_exists = self.if_not_exists();
            let name = self.ident()?;
            self.expect("AS")?;
            let uri = self.expr()?;
            return Ok(Statement::CreateExternalConnection {
                name,
                if_not_exists,
                uri,
            });
        }
        if self.eat_seq(&["LOGICAL", "REPLICATION", "STREAM"]) {
            return self.create_ldr_stream();
        }
        if self.eat("CHANGEFEED") {
            return self.create_changefeed();
        }
        if self.eat_seq(&["LOGICALLY", "REPLICATED"]) {
            return Err(SqlError::unsupported(
                "CREATE LOGICALLY REPLICATED is not supported; create the destination table and use CREATE LOGICAL REPLICATION STREAM",
            ));
        }
        if self.eat_seq(&["OR", "REPLACE"])
            || self.eat("VIEW")
            || self.eat("SEQUENCE")
            || self.eat("TYPE")
            || self.eat("FUNCTION")
        {
            return Err(SqlError::unsupported(
                "this CREATE statement is not supported",
            ));
        }
        if matches!(
            self.peek_word().as_deref(),
            Some("TEMP" | "TEMPORARY" | "UNLOGGED")
        ) {
            return Err(SqlError::unsupported(format!(
                "CREATE {} is not supported",
                self.peek_word().unwrap_or_default()
            )));
        }
        Err(self.unexpected())
    }

    fn user_spec(&mut self) -> Result<UserSpec> {
        let name = self.ident()?;
        let mut spec = UserSpec {
            name,
            if_not_exists: false,
            password: None,
            login: None,
        };
        self.eat("WITH");
        loop {
            if self.eat("LOGIN") {
                spec.login = Some(true);
            } else if self.eat("NOLOGIN") {
                spec.login = Some(false);
            } else if self.eat("PASSWORD") {
                if self.eat("NULL") {
                    spec.password = Some(None);
                } else {
                    spec.password = Some(Some(self.string()?));
                }
            } else if self.eat_seq(&["VALID", "UNTIL"]) {
                let _ = self.string()?;
            } else if let Some(w) = self.peek_word() {
                if matches!(
                    w.as_str(),
                    "CREATEDB"
                        | "NOCREATEDB"
                        | "CREATEROLE"
                        | "NOCREATEROLE"
                        | "CONTROLJOB"
                        | "NOCONTROLJOB"
                        | "VIEWACTIVITY"
                        | "NOVIEWACTIVITY"
                        | "CANCELQUERY"
                        | "NOCANCELQUERY"
                        | "CREATELOGIN"
                        | "NOCREATELOGIN"
                        | "CONTROLCHANGEFEED"
                        | "NOCONTROLCHANGEFEED"
                        | "SQLLOGIN"
                        | "NOSQLLOGIN"
                        | "MODIFYCLUSTERSETTING"
                        | "NOMODIFYCLUSTERSETTING"
                ) {
                    self.p.next_token();
                } else {
                    break;
                }
            } else {
                break;
            }
        }
        Ok(spec)
    }

    fn create_ldr_stream(&mut self) -> Result<Statement> {
        let mut s = CreateLogicalReplicationStream::default();
        self.expect("FROM")?;
        if self.eat("DATABASE") {
            return Err(SqlError::unsupported(
                "logical replication streams on databases are unsupported",
            ));
        }
        s.from_tables = self.table_target()?;
        self.expect("ON")?;
        s.on = match self.p.peek_token().token {
            Token::Placeholder(p) => {
                self.p.next_token();
                p
            }
            _ => self.string()?,
        };
        self.expect("INTO")?;
        if self.eat("DATABASE") {
            return Err(SqlError::unsupported(
                "logical replication streams on databases are unsupported",
            ));
        }
        s.into_tables = self.table_target()?;
        if self.eat("WITH") {
            let parenthesized = self.eat("OPTIONS");
            if parenthesized {
                self.expect_token(&Token::LParen)?;
            }
            loop {
                self.ldr_option(&mut s.options)?;
                if !self.p.consume_token(&Token::Comma) {
                    break;
                }
            }
            if parenthesized {
                self.expect_token(&Token::RParen)?;
            }
        }
        Ok(Statement::CreateLogicalReplicationStream(s))
    }

    fn table_target(&mut self) -> Result<Vec<ObjectName>> {
        if self.eat("TABLES") {
            self.expect_token(&Token::LParen)?;
            let v = self.name_list()?;
            self.expect_token(&Token::RParen)?;
            return Ok(v);
        }
        self.expect("TABLE")?;
        Ok(vec![self.name()?])
    }

    fn option_value(&mut self) -> Result<String> {
        match self.p.peek_token().token {
            Token::SingleQuotedString(s) => {
                self.p.next_token();
                Ok(s)
            }
            Token::Number(n, _) => {
                self.p.next_token();
                Ok(n)
            }
            Token::Word(w) => {
                self.p.next_token();
                Ok(w.value.to_lowercase())
            }
            _ => Err(self.unexpected()),
        }
    }

    fn ldr_option(&mut self, o: &mut LogicalReplicationOptions) -> Result<()> {
        let eq = |me: &mut Self| -> Result<String> {
            me.expect_token(&Token::Eq)?;
            me.option_value()
        };
        if self.eat_seq(&["SKIP", "SCHEMA", "CHECK"]) {
            o.skip_schema_check = true;
        } else if self.eat("MODE") {
            o.mode = Some(eq(self)?);
        } else if self.eat("CURSOR") {
            o.cursor = Some(eq(self)?);
        } else if self.eat_seq(&["DEFAULT", "FUNCTION"]) {
            o.default_function = Some(eq(self)?);
        } else if self.eat("DISCARD") {
            o.discard = Some(eq(self)?);
        } else if self.eat("LABEL") {
            o.label = Some(eq(self)?);
        } else if self.eat("PARENT") {
            o.parent = Some(eq(self)?);
        } else if self.eat("FUNCTION") {
            let f = self.name()?.join(".");
            self.expect("FOR")?;
            self.expect("TABLE")?;
            let t = self.name()?;
            o.functions.push((f, t));
        } else if self.eat("BIDIRECTIONAL") || self.eat("UNIDIRECTIONAL") {
            return Err(SqlError::unsupported(
                "BIDIRECTIONAL/UNIDIRECTIONAL are only valid for CREATE LOGICALLY REPLICATED",
            ));
        } else {
            return Err(self.unexpected());
        }
        Ok(())
    }

    /// A type name: words, optional `(n[, m])`, optional `WITH[OUT] TIME ZONE`.
    fn type_name(&mut self) -> Result<String> {
        let first = match self.p.peek_token().token {
            Token::Word(w) => w.value.to_ascii_uppercase(),
            _ => return Err(self.unexpected()),
        };
        self.p.next_token();
        let mut name = first.clone();
        match first.as_str() {
            "DOUBLE" if self.eat("PRECISION") => {
                name.push_str(" PRECISION");
            }
            "CHARACTER" | "CHAR" if self.eat("VARYING") => {
                name.push_str(" VARYING");
            }
            _ => {}
        }
        if self.p.consume_token(&Token::LParen) {
            let mut args = Vec::new();
            loop {
                match self.p.next_token().token {
                    Token::Number(n, _) => args.push(n),
                    _ => {
                        self.p.prev_token();
                        return Err(self.unexpected());
                    }
                }
                if !self.p.consume_token(&Token::Comma) {
                    break;
                }
            }
            self.expect_token(&Token::RParen)?;
            if !matches!(
                first.as_str(),
                "TIMESTAMP" | "TIMESTAMPTZ" | "TIME" | "INTERVAL"
            ) {
                name.push_str(&format!("({})", args.join(",")));
            }
        }
        if matches!(first.as_str(), "TIMESTAMP" | "TIME") {
            if self.eat_seq(&["WITH", "TIME", "ZONE"]) {
                name.push_str(" WITH TIME ZONE");
            } else if self.eat_seq(&["WITHOUT", "TIME", "ZONE"]) {
                name.push_str(" WITHOUT TIME ZONE");
            }
        }
        if self.peek_is(&Token::LBracket) || self.eat("ARRAY") {
            return Err(SqlError::unsupported("array types are not supported"));
        }
        Ok(name)
    }

    fn index_columns(&mut self) -> Result<Vec<IndexColumnDef>> {
        self.expect_token(&Token::LParen)?;
        let mut v = Vec::new();
        loop {
            if self.peek_is(&Token::LParen) {
                return Err(SqlError::unsupported(
                    "expression indexes are not supported",
                ));
            }
            let name = self.ident()?;
            if self.peek_is(&Token::LParen) {
                return Err(SqlError::unsupported(
                    "expression indexes are not supported",
                ));
            }
            let descending = if self.eat("DESC") {
                true
            } else {
                self.eat("ASC");
                false
            };
            if self.eat("NULLS") && !(self.eat("FIRST") || self.eat("LAST")) {
                return Err(self.unexpected());
            }
            v.push(IndexColumnDef { name, descending });
            if !self.p.consume_token(&Token::Comma) {
                break;
            }
        }
        self.expect_token(&Token::RParen)?;
        Ok(v)
    }

    /// `STORING (…)`, `USING HASH`, `WHERE …`, `WITH (…)` after an index's columns.
    fn index_tail(&mut self, def: &mut IndexDef) -> Result<()> {
        loop {
            if self.eat("STORING") || self.eat("COVERING") || self.eat("INCLUDE") {
                def.storing = self.paren_ident_list()?;
            } else if self.eat_seq(&["USING", "HASH"]) {
                return Err(SqlError::unsupported(
                    "hash-sharded indexes are not supported",
                ));
            } else if self.eat("WHERE") {
                return Err(SqlError::unsupported("partial indexes are not supported"));
            } else if self.eat("VISIBLE")
                || self.eat_seq(&["NOT", "VISIBLE"])
                || self.eat("INVISIBLE")
            {
            } else if self.peek_word().as_deref() == Some("WITH") && self.word_at(1).is_none() {
                self.p.next_token();
                self.expect_token(&Token::LParen)?;
                let _ = self.storage_params_body()?;
            } else {
                return Ok(());
            }
        }
    }

    fn create_index(&mut self, unique: bool) -> Result<Statement> {
        self.eat("CONCURRENTLY");
        let if_not_exists = self.if_not_exists();
        let name = if self.peek_word().as_deref() == Some("ON") {
            None
        } else {
            Some(self.ident()?)
        };
        self.expect("ON")?;
        let table = self.name()?;
        if self.eat("USING") {
            let method = self.ident()?;
            if !matches!(method.as_str(), "btree" | "prefix") {
                return Err(SqlError::unsupported(format!(
                    "index method {method} is not supported"
                )));
            }
        }
        let columns = self.index_columns()?;
        let mut index = IndexDef {
            name,
            unique,
            columns,
            storing: vec![],
        };
        self.index_tail(&mut index)?;
        Ok(Statement::CreateIndex(CreateIndex {
            table,
            if_not_exists,
            index,
        }))
    }

    fn storage_params_body(&mut self) -> Result<Vec<(String, Expr)>> {
        let mut v = Vec::new();
        loop {
            let k = self.setting_name()?;
            self.expect_token(&Token::Eq)?;
            let e = self.expr()?;
            v.push((k, e));
            if !self.p.consume_token(&Token::Comma) {
                break;
            }
        }
        self.expect_token(&Token::RParen)?;
        Ok(v)
    }

    fn create_table(&mut self) -> Result<Statement> {
        let if_not_exists = self.if_not_exists();
        let name = self.name()?;
        if self.eat("AS") {
            return Err(SqlError::unsupported("CREATE TABLE AS is not supported"));
        }
        self.expect_token(&Token::LParen)?;
        let mut elements = Vec::new();
        if !self.p.consume_token(&Token::RParen) {
            loop {
                elements.push(self.table_element()?);
                if self.p.consume_token(&Token::Comma) {
                    continue;
                }
                self.expect_token(&Token::RParen)?;
                break;
            }
        }
        let mut storage_params = Vec::new();
        if self.eat("WITH") {
            self.expect_token(&Token::LParen)?;
            storage_params = self.storage_params_body()?;
        }
        // CockroachDB accepts trailing `LOCALITY …`, `PARTITION BY …`: reject clearly.
        if let Some(w) = self.peek_word()
            && matches!(w.as_str(), "LOCALITY" | "PARTITION" | "INHERITS")
        {
            return Err(SqlError::unsupported(format!("{w} is not supported")));
        }
        Ok(Statement::CreateTable(CreateTable {
            name,
            if_not_exists,
            elements,
            storage_params,
        }))
    }

    fn fk_tail(&mut self, columns: Vec<String>, name: Option<String>) -> Result<ForeignKeyDef> {
        self.expect("REFERENCES")?;
        let ref_table = self.name()?;
        let ref_columns = if self.peek_is(&Token::LParen) {
            self.paren_ident_list()?
        } else {
            vec![]
        };
        let mut fk = ForeignKeyDef {
            name,
            columns,
            ref_table,
            ref_columns,
            on_delete: None,
            on_update: None,
        };
        loop {
            if self.eat_seq(&["ON", "DELETE"]) {
                fk.on_delete = Some(self.referential_action()?);
            } else if self.eat_seq(&["ON", "UPDATE"]) {
                fk.on_update = Some(self.referential_action()?);
            } else if self.eat("MATCH") {
                self.p.next_token();
            } else if self.eat_seq(&["NOT", "VALID"]) {
            } else {
                break;
            }
        }
        Ok(fk)
    }

    fn referential_action(&mut self) -> Result<String> {
        if self.eat_seq(&["NO", "ACTION"]) {
            return Ok("NO ACTION".into());
        }
        if self.eat("RESTRICT") {
            return Ok("RESTRICT".into());
        }
        if self.eat("CASCADE") {
            return Ok("CASCADE".into());
        }
        if self.eat_seq(&["SET", "NULL"]) {
            return Ok("SET NULL".into());
        }
        if self.eat_seq(&["SET", "DEFAULT"]) {
            return Ok("SET DEFAULT".into());
        }
        Err(self.unexpected())
    }

    fn table_element(&mut self) -> Result<TableElement> {
        let constraint_name = if self.eat("CONSTRAINT") {
            Some(self.ident()?)
        } else {
            None
        };
        let w = self.peek_word();
        match w.as_deref() {
            Some("PRIMARY") if self.word_at(1).as_deref() == Some("KEY") => {
                self.p.next_token();
                self.p.next_token();
                let columns = self.index_columns()?;
                let mut def = IndexDef {
                    name: None,
                    unique: true,
                    columns,
                    storing: vec![],
                };
                self.index_tail(&mut def)?;
                return Ok(TableElement::PrimaryKey {
                    name: constraint_name,
                    columns: def.columns,
                });
            }
            Some("UNIQUE")
                if matches!(self.p.peek_nth_token(1).token, Token::LParen)
                    || self.word_at(1).as_deref() == Some("INDEX") =>
            {
                self.p.next_token();
                let name = if self.eat("INDEX") {
                    if self.peek_is(&Token::LParen) {
                        constraint_name
                    } else {
                        Some(self.ident()?)
                    }
                } else {
                    constraint_name
                };
                if self.eat_seq(&["WITHOUT", "INDEX"]) {
                    return Err(SqlError::unsupported(
                        "UNIQUE WITHOUT INDEX is not supported",
                    ));
                }
                let columns = self.index_columns()?;
                let mut def = IndexDef {
                    name,
                    unique: true,
                    columns,
                    storing: vec![],
                };
                self.index_tail(&mut def)?;
                return Ok(TableElement::Index(def));
            }
            Some("INDEX") if constraint_name.is_none() => {
                self.p.next_token();
                let name = if self.peek_is(&Token::LParen) {
                    None
                } else {
                    Some(self.ident()?)
                };
                let columns = self.index_columns()?;
                let mut def = IndexDef {
                    name,
                    unique: false,
                    columns,
                    storing: vec![],
                };
                self.index_tail(&mut def)?;
                return Ok(TableElement::Index(def));
            }
            Some("INVERTED") if constraint_name.is_none() => {
                return Err(SqlError::unsupported("inverted indexes are not supported"));
            }
            Some("CHECK") => {
                self.p.next_token();
                self.expect_token(&Token::LParen)?;
                let expr = self.expr()?;
                self.expect_token(&Token::RParen)?;
                return Ok(TableElement::Check {
                    name: constraint_name,
                    expr,
                });
            }
            Some("FOREIGN") if self.word_at(1).as_deref() == Some("KEY") => {
                self.p.next_token();
                self.p.next_token();
                let columns = self.paren_ident_list()?;
                return Ok(TableElement::ForeignKey(
                    self.fk_tail(columns, constraint_name)?,
                ));
            }
            Some("FAMILY") if constraint_name.is_none() => {
                self.p.next_token();
                if !self.peek_is(&Token::LParen) {
                    self.ident()?;
                }
                self.paren_ident_list()?;
                return Ok(TableElement::Family);
            }
            _ => {}
        }
        if constraint_name.is_some() {
            return Err(self.unexpected());
        }
        Ok(TableElement::Column(self.column_def()?))
    }

    fn column_def(&mut self) -> Result<ColumnDef> {
        let name = self.ident()?;
        let type_name = self.type_name()?;
        let serial = matches!(
            type_name.as_str(),
            "SERIAL" | "SERIAL2" | "SERIAL4" | "SERIAL8" | "SMALLSERIAL" | "BIGSERIAL"
        );
        let mut c = ColumnDef {
            name,
            type_name,
            nullable: None,
            default: None,
            primary_key: false,
            unique: None,
            checks: vec![],
            references: None,
            hidden: false,
            serial,
        };
        loop {
            let cname = if self.eat("CONSTRAINT") {
                Some(self.ident()?)
            } else {
                None
            };
            if self.eat_seq(&["NOT", "NULL"]) {
                c.nullable = Some(false);
            } else if self.eat("NULL") {
                c.nullable = Some(true);
            } else if self.eat_seq(&["NOT", "VISIBLE"]) {
                c.hidden = true;
            } else if self.eat("DEFAULT") {
                c.default = Some(self.expr()?);
            } else if self.eat_seq(&["PRIMARY", "KEY"]) {
                c.primary_key = true;
                if self.eat_seq(&["USING", "HASH"]) {
                    return Err(SqlError::unsupported(
                        "hash-sharded indexes are not supported",
                    ));
                }
            } else if self.eat("UNIQUE") {
                c.unique = Some(cname);
                if self.eat_seq(&["WITHOUT", "INDEX"]) {
                    return Err(SqlError::unsupported(
                        "UNIQUE WITHOUT INDEX is not supported",
                    ));
                }
            } else if self.eat("CHECK") {
                self.expect_token(&Token::LParen)?;
                let e = self.expr()?;
                self.expect_token(&Token::RParen)?;
                c.checks.push((cname, e));
            } else if self.peek_word().as_deref() == Some("REFERENCES") {
                c.references = Some(self.fk_tail(vec![c.name.clone()], cname)?);
            } else if self.eat("AS") || self.eat_seq(&["GENERATED", "ALWAYS", "AS"]) {
                return Err(SqlError::unsupported("computed columns are not supported"));
            } else if self.eat("FAMILY") || self.eat_seq(&["CREATE", "FAMILY"]) {
                if !self.peek_is(&Token::Comma) && !self.peek_is(&Token::RParen) {
                    self.ident()?;
                }
            } else if self.eat("COLLATE") {
                return Err(SqlError::unsupported("collated strings are not supported"));
            } else if self.eat_seq(&["ON", "UPDATE"]) {
                return Err(SqlError::unsupported(
                    "ON UPDATE expressions are not supported",
                ));
            } else if cname.is_some() {
                return Err(self.unexpected());
            } else {
                break;
            }
        }
        Ok(c)
    }

    // ---- DROP / ALTER ----

    fn drop(&mut self) -> Result<Statement> {
        self.expect("DROP")?;
        if self.eat("DATABASE") {
            let if_exists = self.if_exists();
            let name = self.ident()?;
            let cascade = self.eat("CASCADE");
            self.eat("RESTRICT");
            return Ok(Statement::DropDatabase {
                name,
                if_exists,
                cascade,
            });
        }
        if self.eat("TABLE") {
            let if_exists = self.if_exists();
            let names = self.name_list()?;
            let cascade = self.eat("CASCADE");
            self.eat("RESTRICT");
            return Ok(Statement::DropTable {
                names,
                if_exists,
                cascade,
            });
        }
        if self.eat("INDEX") {
            self.eat("CONCURRENTLY");
            let if_exists = self.if_exists();
            let mut names = Vec::new();
            loop {
                let first = self.name()?;
                if self.p.consume_token(&Token::AtSign) {
                    let idx = self.ident()?;
                    names.push(IndexName {
                        table: Some(first),
                        index: vec![idx],
                    });
                } else {
                    names.push(IndexName {
                        table: None,
                        index: first,
                    });
                }
                if !self.p.consume_token(&Token::Comma) {
                    break;
                }
            }
            self.eat("CASCADE");
            self.eat("RESTRICT");
            return Ok(Statement::DropIndex { names, if_exists });
        }
        if self.eat("USER") || self.eat("ROLE") {
            let if_exists = self.if_exists();
            let names = self.ident_list()?;
            return Ok(Statement::DropUser { names, if_exists });
        }
        if self.eat_seq(&["EXTERNAL", "CONNECTION"]) {
            let if_exists = self.if_exists();
            let name = self.ident()?;
            return Ok(Statement::DropExternalConnection { name, if_exists });
        }
        if self.eat("SCHEMA") || self.eat("VIEW") || self.eat("SEQUENCE") || self.eat("TYPE") {
            return Err(SqlError::unsupported(
                "this DROP statement is not supported",
            ));
        }
        Err(self.unexpected())
    }

    fn alter(&mut self) -> Result<Statement> {
        self.expect("ALTER")?;
        if self.eat("USER") || self.eat("ROLE") {
            let _if_exists = self.if_exists();
            let spec = self.user_spec()?;
            return Ok(Statement::AlterUser(spec));
        }
        if self.eat("RANGE") {
            let range = self.ident()?.to_lowercase();
            if self.eat_seq(&["CONFIGURE", "ZONE"]) {
                let options = self.zone_options()?;
                return Ok(Statement::ConfigureRangeZone { range, options });
            }
            return Err(SqlError::unsupported(format!(
                "ALTER RANGE {range} is not supported (only CONFIGURE ZONE)"
            )));
        }
        if self.eat("DATABASE") || self.eat("PARTITION") || self.eat("INDEX") {
            // Zone configurations and similar: accepted, no effect.
            while !self.peek_is(&Token::EOF) && !self.peek_is(&Token::SemiColon) {
                self.p.next_token();
            }
            return Ok(Statement::NoOp {
                tag: "CONFIGURE ZONE".into(),
            });
        }
        self.expect("TABLE")?;
        let if_exists = self.if_exists();
        let table = self.name()?;
        let mut ops = Vec::new();
        loop {
            ops.push(self.alter_op()?);
            if !self.p.consume_token(&Token::Comma) {
                break;
            }
        }
        Ok(Statement::AlterTable {
            table,
            if_exists,
            ops,
        })
    }

    fn alter_op(&mut self) -> Result<AlterTableOp> {
        if self.eat("ADD") {
            if matches!(
                self.peek_word().as_deref(),
                Some("CONSTRAINT" | "CHECK" | "UNIQUE" | "FOREIGN" | "PRIMARY")
            ) {
                return Ok(AlterTableOp::AddConstraint(self.table_element()?));
            }
            self.eat("COLUMN");
            let if_not_exists = self.if_not_exists();
            let column = self.column_def()?;
            return Ok(AlterTableOp::AddColumn {
                column,
                if_not_exists,
            });
        }
        if self.eat("DROP") {
            if self.eat("CONSTRAINT") {
                let if_exists = self.if_exists();
                let name = self.ident()?;
                self.eat("CASCADE");
                self.eat("RESTRICT");
                return Ok(AlterTableOp::DropConstraint { name, if_exists });
            }
            self.eat("COLUMN");
            let if_exists = self.if_exists();
            let name = self.ident()?;
            self.eat("CASCADE");
            self.eat("RESTRICT");
            return Ok(AlterTableOp::DropColumn { name, if_exists });
        }
        if self.eat("SET") {
            self.expect_token(&Token::LParen)?;
            return Ok(AlterTableOp::SetStorage(self.storage_params_body()?));
        }
        if self.eat("RESET") {
            self.expect_token(&Token::LParen)?;
            let mut keys = vec![self.setting_name()?];
            while self.p.consume_token(&Token::Comma) {
                keys.push(self.setting_name()?);
            }
            self.expect_token(&Token::RParen)?;
            return Ok(AlterTableOp::ResetStorage(keys));
        }
        if self.eat("ALTER") {
            self.eat("COLUMN");
            let column = self.ident()?;
            if self.eat_seq(&["SET", "DEFAULT"]) {
                let e = self.expr()?;
                return Ok(AlterTableOp::SetDefault {
                    column,
                    default: Some(e),
                });
            }
            if self.eat_seq(&["DROP", "DEFAULT"]) {
                return Ok(AlterTableOp::SetDefault {
                    column,
                    default: None,
                });
            }
            if self.eat_seq(&["SET", "NOT", "NULL"]) {
                return Ok(AlterTableOp::SetNotNull {
                    column,
                    not_null: true,
                });
            }
            if self.eat_seq(&["DROP", "NOT", "NULL"]) {
                return Ok(AlterTableOp::SetNotNull {
                    column,
                    not_null: false,
                });
            }
            return Err(SqlError::unsupported(
                "this ALTER COLUMN form is not supported",
            ));
        }
        if self.eat_seq(&["CONFIGURE", "ZONE"]) {
            return Ok(AlterTableOp::ConfigureZone(self.zone_options()?));
        }
        if matches!(
            self.peek_word().as_deref(),
            Some("RENAME" | "OWNER" | "SPLIT" | "PARTITION" | "INJECT" | "SCATTER" | "VALIDATE")
        ) {
            return Err(SqlError::unsupported(format!(
                "ALTER TABLE … {} is not supported",
                self.peek_word().unwrap_or_default()
            )));
        }
        Err(self.unexpected())
    }
}

fn query_to_source(q: Box<Query>) -> InsertSource {
    if q.with.is_none()
        && q.order_by.is_none()
        && q.limit_clause.is_none()
        && let sql::SetExpr::Values(v) = q.body.as_ref()
    {
        return InsertSource::Values(v.rows.iter().map(|r| r.content.clone()).collect());
    }
    InsertSource::Query(q)
}

fn single_table(from: &[sql::TableWithJoins], what: &str) -> Result<(ObjectName, Option<String>)> {
    if from.len() != 1 || !from[0].joins.is_empty() {
        return Err(SqlError::unsupported(format!(
            "{what} with multiple tables"
        )));
    }
    match &from[0].relation {
        sql::TableFactor::Table { name, alias, .. } => {
            let alias = alias.as_ref().map(|a| normalize(&a.name));
            Ok((object_name(name)?, alias))
        }
        _ => Err(SqlError::unsupported(format!(
            "{what} on this kind of table expression"
        ))),
    }
}

/// Converts a statement sqlparser parsed (queries and DML) into ours.
fn convert_standard(st: sql::Statement) -> Result<Statement> {
    match st {
        sql::Statement::Query(q) => Ok(Statement::Select(q)),
        sql::Statement::Insert(ins) => {
            let table = match &ins.table {
                sql::TableObject::TableName(n) => object_name(n)?,
                _ => return Err(SqlError::unsupported("INSERT into a table function")),
            };
            let columns = ins
                .columns
                .iter()
                .map(|c| {
                    let n = object_name(c)?;
                    n.last().cloned().ok_or_else(|| SqlError::syntax("("))
                })
                .collect::<Result<Vec<_>>>()?;
            let source = match ins.source {
                Some(q) => query_to_source(q),
                None => InsertSource::DefaultValues,
            };
            let on_conflict = match ins.on {
                None => None,
                Some(sql::OnInsert::OnConflict(oc)) => {
                    let columns = match oc.conflict_target {
                        None => vec![],
                        Some(sql::ConflictTarget::Columns(cols)) => {
                            cols.iter().map(normalize).collect()
                        }
                        Some(sql::ConflictTarget::OnConstraint(_)) => {
                            return Err(SqlError::unsupported("ON CONFLICT ON CONSTRAINT"));
                        }
                    };
                    Some(match oc.action {
                        sql::OnConflictAction::DoNothing => OnConflict::DoNothing { columns },
                        sql::OnConflictAction::DoUpdate(du) => {
                            if columns.is_empty() {
                                return Err(SqlError::new(
                                    crate::error::sqlstate::SYNTAX_ERROR,
                                    "missing conflict target for ON CONFLICT DO UPDATE",
                                ));
                            }
                            OnConflict::DoUpdate {
                                columns,
                                assignments: assignments(du.assignments)?,
                                selection: du.selection,
                            }
                        }
                    })
                }
                Some(_) => return Err(SqlError::unsupported("ON DUPLICATE KEY UPDATE")),
            };
            let alias = ins.table_alias.as_ref().map(|a| normalize(&a.alias));
            Ok(Statement::Insert(InsertStmt {
                table,
                alias,
                columns,
                source,
                on_conflict,
                returning: ins.returning,
                upsert: false,
            }))
        }
        sql::Statement::Update(up) => {
            if up.from.is_some() {
                return Err(SqlError::unsupported("UPDATE … FROM"));
            }
            let (table, alias) = single_table(std::slice::from_ref(&up.table), "UPDATE")?;
            Ok(Statement::Update(UpdateStmt {
                table,
                alias,
                assignments: assignments(up.assignments)?,
                selection: up.selection,
                returning: up.returning,
            }))
        }
        sql::Statement::Delete(del) => {
            if del.using.is_some() {
                return Err(SqlError::unsupported("DELETE … USING"));
            }
            let from = match &del.from {
                sql::FromTable::WithFromKeyword(f) | sql::FromTable::WithoutKeyword(f) => f,
            };
            let (table, alias) = single_table(from, "DELETE")?;
            Ok(Statement::Delete(DeleteStmt {
                table,
                alias,
                selection: del.selection,
                returning: del.returning,
            }))
        }
        other => Err(SqlError::unsupported(format!(
            "statement {}",
            first_words(&other.to_string())
        ))),
    }
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

fn assignments(list: Vec<sql::Assignment>) -> Result<Vec<(String, Expr)>> {
    list.into_iter()
        .map(|a| match a.target {
            sql::AssignmentTarget::ColumnName(n) => {
                let n = object_name(&n)?;
                Ok((n.last().cloned().unwrap_or_default(), a.value))
            }
            sql::AssignmentTarget::Tuple(_) => Err(SqlError::unsupported("tuple assignment")),
        })
        .collect()
}

#[cfg(test)]
mod tests;
