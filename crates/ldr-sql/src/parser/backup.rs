//! `BACKUP`, `RESTORE`, `SHOW BACKUPS IN` and `SHOW BACKUP FROM … IN`, and the
//! `AS OF SYSTEM TIME` clause (taken out of the text before sqlparser sees it, which does not
//! know it, and put back on the statement it belongs to).
//!
//! ```text
//! BACKUP [TABLE] t [, …] | DATABASE d [, …] INTO [LATEST IN] 'uri' [AS OF SYSTEM TIME x] [WITH …]
//! RESTORE [TABLE] t [, …] | DATABASE d [, …] FROM <LATEST | 'subdir'> IN 'uri' [WITH …]
//! SHOW BACKUPS IN 'uri'
//! SHOW BACKUP [FROM] <LATEST | 'subdir'> IN 'uri'
//! ```

use sqlparser::tokenizer::Token;

use super::P;
use crate::error::{Result, SqlError, sqlstate};
use crate::parser::ast::{AsOf, BackupStmt, BackupTargets, RestoreStmt, Statement};

impl P<'_> {
    fn backup_targets(&mut self) -> Result<BackupTargets> {
        if self.eat("DATABASE") {
            return Ok(BackupTargets::Databases(self.ident_list()?));
        }
        let mut tables = Vec::new();
        loop {
            self.eat("TABLE");
            tables.push(self.name()?);
            if !self.p.consume_token(&Token::Comma) {
                break;
            }
        }
        Ok(BackupTargets::Tables(tables))
    }

    fn backup_options(&mut self) -> Result<Vec<(String, Option<String>)>> {
        let mut out = Vec::new();
        if !self.eat("WITH") {
            return Ok(out);
        }
        let parenthesized = self.eat("OPTIONS");
        if parenthesized {
            self.expect_token(&Token::LParen)?;
        }
        loop {
            let name = self.ident()?.to_ascii_lowercase();
            let value = if self.p.consume_token(&Token::Eq) {
                Some(self.option_value()?)
            } else {
                None
            };
            out.push((name, value));
            if !self.p.consume_token(&Token::Comma) {
                break;
            }
        }
        if parenthesized {
            self.expect_token(&Token::RParen)?;
        }
        Ok(out)
    }

    /// `LATEST` or a quoted subdirectory.
    fn backup_subdir(&mut self) -> Result<String> {
        if self.eat("LATEST") {
            return Ok("LATEST".into());
        }
        self.string()
    }

    /// After nothing: at `BACKUP`.
    pub(super) fn backup(&mut self) -> Result<Statement> {
        self.expect("BACKUP")?;
        if self.peek_word().as_deref() == Some("INTO") {
            return Err(SqlError::unsupported(
                "full cluster backups (BACKUP INTO without TABLE or DATABASE)",
            ));
        }
        let targets = self.backup_targets()?;
        self.expect("INTO")?;
        let incremental = self.eat_seq(&["LATEST", "IN"]);
        let collection = self.string()?;
        let options = self.backup_options()?;
        Ok(Statement::Backup(BackupStmt {
            targets,
            collection,
            incremental,
            as_of: None,
            options,
            statement: String::new(),
        }))
    }

    /// At `RESTORE`.
    pub(super) fn restore(&mut self) -> Result<Statement> {
        self.expect("RESTORE")?;
        if self.peek_word().as_deref() == Some("FROM") {
            return Err(SqlError::unsupported(
                "full cluster restores (RESTORE FROM without TABLE or DATABASE)",
            ));
        }
        let targets = self.backup_targets()?;
        self.expect("FROM")?;
        let subdir = self.backup_subdir()?;
        self.expect("IN")?;
        let collection = self.string()?;
        let options = self.backup_options()?;
        Ok(Statement::Restore(RestoreStmt {
            targets,
            subdir,
            collection,
            as_of: None,
            options,
            statement: String::new(),
        }))
    }

    /// After `SHOW`, at `BACKUP` or `BACKUPS`.
    pub(super) fn show_backup(&mut self) -> Result<Statement> {
        if self.eat("BACKUPS") {
            self.expect("IN")?;
            return Ok(Statement::ShowBackups {
                collection: self.string()?,
            });
        }
        self.expect("BACKUP")?;
        if matches!(
            self.peek_word().as_deref(),
            Some("SCHEMAS" | "FILES" | "RANGES")
        ) {
            return Err(SqlError::unsupported(format!(
                "SHOW BACKUP {}",
                self.peek_word().unwrap_or_default()
            )));
        }
        self.eat("FROM");
        let subdir = self.backup_subdir()?;
        self.expect("IN")?;
        let collection = self.string()?;
        Ok(Statement::ShowBackup { subdir, collection })
    }
}

/// An `AS OF SYSTEM TIME` clause found in a query string: where it started, what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FoundAsOf {
    pub offset: usize,
    pub as_of: AsOf,
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// The length of `words` (separated by whitespace, case-insensitive) at `b[i..]`, ending at a
/// word boundary.
fn match_words(b: &[u8], mut i: usize, words: &[&str]) -> Option<usize> {
    let start = i;
    for (n, w) in words.iter().enumerate() {
        if n > 0 {
            let ws = b[i..]
                .iter()
                .take_while(|c| c.is_ascii_whitespace())
                .count();
            if ws == 0 {
                return None;
            }
            i += ws;
        }
        let end = i + w.len();
        if end > b.len() || !b[i..end].eq_ignore_ascii_case(w.as_bytes()) {
            return None;
        }
        i = end;
    }
    if i < b.len() && is_ident_byte(b[i]) {
        return None;
    }
    Some(i - start)
}

fn aost_error(message: impl Into<String>) -> SqlError {
    SqlError::new(sqlstate::SYNTAX_ERROR, message)
}

/// Reads the operand of `AS OF SYSTEM TIME` at `b[i..]`: its value and where it ends.
fn operand(sql: &str, i: usize) -> Result<(AsOf, usize)> {
    let b = sql.as_bytes();
    let mut i = i + b[i..]
        .iter()
        .take_while(|c| c.is_ascii_whitespace())
        .count();
    match b.get(i) {
        Some(b'\'') => {
            let mut value = String::new();
            let mut j = i + 1;
            let mut run = j;
            loop {
                match b.get(j) {
                    None => return Err(aost_error("unterminated string literal")),
                    Some(b'\'') if b.get(j + 1) == Some(&b'\'') => {
                        value.push_str(&sql[run..=j]);
                        j += 2;
                        run = j;
                    }
                    Some(b'\'') => {
                        value.push_str(&sql[run..j]);
                        return Ok((AsOf::Text(value), j + 1));
                    }
                    Some(_) => j += 1,
                }
            }
        }
        Some(c) if c.is_ascii_digit() || *c == b'.' => {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            Ok((AsOf::Number(sql[start..i].to_string()), i))
        }
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
            let start = i;
            while i < b.len() && is_ident_byte(b[i]) {
                i += 1;
            }
            let name = sql[start..i].to_ascii_lowercase();
            let mut j = i + b[i..]
                .iter()
                .take_while(|c| c.is_ascii_whitespace())
                .count();
            if b.get(j) == Some(&b'(') {
                j += 1;
                j += b[j..]
                    .iter()
                    .take_while(|c| c.is_ascii_whitespace())
                    .count();
                if b.get(j) == Some(&b')') && name == "follower_read_timestamp" {
                    return Ok((AsOf::FollowerReadTimestamp, j + 1));
                }
            }
            Err(SqlError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "AS OF SYSTEM TIME: only constant expressions or follower_read_timestamp are allowed (found {name})"
                ),
            ))
        }
        _ => Err(aost_error(
            "AS OF SYSTEM TIME: expected a string, a number or follower_read_timestamp()",
        )),
    }
}

/// Finds every `AS OF SYSTEM TIME x` outside strings, identifiers and comments and blanks it
/// out (same length, so offsets into the text still hold).
pub(crate) fn extract_as_of(sql: &str) -> Result<(String, Vec<FoundAsOf>)> {
    // Most statements never say SYSTEM: skip them without a copy.
    if !sql
        .as_bytes()
        .windows(6)
        .any(|w| w.eq_ignore_ascii_case(b"system"))
    {
        return Ok((sql.to_string(), vec![]));
    }
    let b = sql.as_bytes();
    let mut out = sql.as_bytes().to_vec();
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < b.len() {
                    if b[i] == q {
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            c if (c == b'a' || c == b'A') && (i == 0 || !is_ident_byte(b[i - 1])) => {
                if let Some(len) = match_words(b, i, &["as", "of", "system", "time"]) {
                    let (as_of, end) = operand(sql, i + len)?;
                    for byte in &mut out[i..end] {
                        *byte = b' ';
                    }
                    found.push(FoundAsOf { offset: i, as_of });
                    i = end;
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    // Only ASCII bytes were replaced by spaces, so the text stays UTF-8.
    let text = String::from_utf8(out).map_err(|e| SqlError::internal(e.to_string()))?;
    Ok((text, found))
}

/// Puts a clause found inside a statement's text onto the statement.
pub(crate) fn attach_as_of(stmt: Statement, as_of: AsOf) -> Result<Statement> {
    match stmt {
        Statement::Select(query) => Ok(Statement::SelectAsOf { query, as_of }),
        Statement::Backup(mut b) if b.as_of.is_none() => {
            b.as_of = Some(as_of);
            Ok(Statement::Backup(b))
        }
        Statement::Restore(_) => Err(SqlError::unsupported(
            "RESTORE AS OF SYSTEM TIME (it needs a backup with revision_history)",
        )),
        Statement::SelectAsOf { .. } | Statement::Backup(_) => Err(aost_error(
            "AS OF SYSTEM TIME: multiple AS OF SYSTEM TIME clauses",
        )),
        _ => Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "AS OF SYSTEM TIME: only allowed in SELECT and BACKUP statements",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::{parse, parse_one};

    #[test]
    fn extracts_clauses_outside_strings() {
        let (text, found) =
            extract_as_of("SELECT 'as of system time' FROM t AS OF SYSTEM TIME '-10s' WHERE a = 1")
                .expect("parse");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].as_of, AsOf::Text("-10s".into()));
        assert_eq!(found[0].offset, 34);
        assert!(text.starts_with("SELECT 'as of system time' FROM t "));
        assert!(text.trim_end().ends_with("WHERE a = 1"));
        let (_, found) =
            extract_as_of("select * from t as  of\nsystem time follower_read_timestamp ( )")
                .expect("follower");
        assert_eq!(found[0].as_of, AsOf::FollowerReadTimestamp);
        let (_, found) =
            extract_as_of("SELECT * FROM t AS OF SYSTEM TIME 1733580000000000000.0000000000")
                .expect("number");
        assert_eq!(
            found[0].as_of,
            AsOf::Number("1733580000000000000.0000000000".into())
        );
        let (_, found) = extract_as_of("SELECT 'it''s' FROM t AS OF SYSTEM TIME 'it''s'")
            .expect("escaped quote");
        assert_eq!(found[0].as_of, AsOf::Text("it's".into()));
        let (_, found) = extract_as_of("SELECT alias_of FROM t").expect("no clause");
        assert!(found.is_empty());
    }

    #[test]
    fn select_as_of_parses() {
        match parse_one("SELECT k, v FROM t AS OF SYSTEM TIME '-5s' WHERE k > 1 ORDER BY k") {
            Ok(Statement::SelectAsOf { as_of, .. }) => {
                assert_eq!(as_of, AsOf::Text("-5s".into()));
            }
            other => panic!("{other:?}"),
        }
        let v = parse("SELECT 1; SELECT * FROM t AS OF SYSTEM TIME '-1s'").expect("two");
        assert!(matches!(v[0], Statement::Select(_)));
        assert!(matches!(v[1], Statement::SelectAsOf { .. }));
        let e = parse_one("INSERT INTO t VALUES (1) AS OF SYSTEM TIME '-1s'").expect_err("insert");
        assert_eq!(e.code(), "0A000");
        let e = parse_one("SELECT * FROM t AS OF SYSTEM TIME now()").expect_err("now");
        assert_eq!(e.code(), "0A000");
    }

    #[test]
    fn backup_statements_parse() {
        let Statement::Backup(b) = parse_one(
            "BACKUP TABLE db.public.t, u INTO 'nodelocal://1/b' AS OF SYSTEM TIME '-10s' WITH detached",
        )
        .expect("backup") else {
            panic!("not a backup")
        };
        assert_eq!(
            b.targets,
            BackupTargets::Tables(vec![
                vec!["db".into(), "public".into(), "t".into()],
                vec!["u".into()]
            ])
        );
        assert_eq!(b.collection, "nodelocal://1/b");
        assert!(!b.incremental);
        assert_eq!(b.as_of, Some(AsOf::Text("-10s".into())));
        assert_eq!(b.options, vec![("detached".to_string(), None)]);
        assert_eq!(
            b.statement,
            "BACKUP TABLE db.public.t, u INTO 'nodelocal://1/b' AS OF SYSTEM TIME '-10s' WITH detached"
        );
        let Statement::Backup(b) =
            parse_one("BACKUP DATABASE d INTO LATEST IN 'nodelocal://1/b'").expect("incremental")
        else {
            panic!("not a backup")
        };
        assert!(b.incremental);
        assert_eq!(b.targets, BackupTargets::Databases(vec!["d".into()]));

        let Statement::Restore(r) = parse_one(
            "RESTORE TABLE t FROM LATEST IN 'nodelocal://1/b' WITH into_db = 'other', skip_missing_foreign_keys",
        )
        .expect("restore") else {
            panic!("not a restore")
        };
        assert_eq!(r.subdir, "LATEST");
        assert_eq!(
            r.options,
            vec![
                ("into_db".to_string(), Some("other".to_string())),
                ("skip_missing_foreign_keys".to_string(), None)
            ]
        );
        let Statement::Restore(r) =
            parse_one("RESTORE DATABASE d FROM '/2026/12/07-123456.78' IN 'nodelocal://1/b' WITH new_db_name = 'd2'")
                .expect("restore db")
        else {
            panic!("not a restore")
        };
        assert_eq!(r.subdir, "/2026/12/07-123456.78");
        assert_eq!(r.targets, BackupTargets::Databases(vec!["d".into()]));

        assert_eq!(
            parse_one("SHOW BACKUPS IN 'nodelocal://1/b'").expect("show backups"),
            Statement::ShowBackups {
                collection: "nodelocal://1/b".into()
            }
        );
        assert_eq!(
            parse_one("SHOW BACKUP FROM LATEST IN 'nodelocal://1/b'").expect("show backup"),
            Statement::ShowBackup {
                subdir: "LATEST".into(),
                collection: "nodelocal://1/b".into()
            }
        );
        let e = parse_one("RESTORE TABLE t FROM LATEST IN 'x' AS OF SYSTEM TIME '-1s'")
            .expect_err("restore aost");
        assert_eq!(e.code(), "0A000");
        for bad in [
            "BACKUP TABLE t",
            "BACKUP TABLE t INTO",
            "RESTORE TABLE t FROM LATEST 'x'",
            "SHOW BACKUPS 'x'",
        ] {
            let e = parse_one(bad).expect_err(bad);
            assert_eq!(e.code(), "42601", "{bad}: {e}");
        }
    }
}
