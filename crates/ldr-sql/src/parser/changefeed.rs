//! `CREATE CHANGEFEED FOR [TABLE] t [, [TABLE] u …] [INTO 'sink'] [WITH opt [= value], …]`
//! (also `WITH OPTIONS (…)`): the statement as written. Option names and values are checked
//! by the changefeed crate, which knows CockroachDB's option table and error texts.

use sqlparser::tokenizer::Token;

use super::P;
use crate::error::Result;
use crate::parser::ast::{CreateChangefeed, Statement};

impl P<'_> {
    /// After `CREATE CHANGEFEED`.
    pub(super) fn create_changefeed(&mut self) -> Result<Statement> {
        let mut s = CreateChangefeed::default();
        self.expect("FOR")?;
        loop {
            self.eat("TABLE");
            s.targets.push(self.name()?);
            if !self.p.consume_token(&Token::Comma) {
                break;
            }
        }
        if self.eat("INTO") {
            s.sink = Some(self.string()?);
        }
        if self.eat("WITH") {
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
                s.options.push((name, value));
                if !self.p.consume_token(&Token::Comma) {
                    break;
                }
            }
            if parenthesized {
                self.expect_token(&Token::RParen)?;
            }
        }
        Ok(Statement::CreateChangefeed(s))
    }
}

#[cfg(test)]
mod tests {
    use crate::parser::{CreateChangefeed, Statement, parse_one};

    fn parsed(sql: &str) -> CreateChangefeed {
        match parse_one(sql).unwrap_or_else(|e| panic!("{sql}: {e}")) {
            Statement::CreateChangefeed(c) => c,
            other => panic!("{sql}: parsed as {other:?}"),
        }
    }

    #[test]
    fn parses_targets_sink_and_options() {
        let c = parsed(
            "CREATE CHANGEFEED FOR TABLE db.public.t, TABLE u INTO 'nodelocal://1/cf' WITH updated, resolved = '10s', format = json, initial_scan = 'only'",
        );
        assert_eq!(
            c.targets,
            vec![
                vec!["db".to_string(), "public".into(), "t".into()],
                vec!["u".to_string()]
            ]
        );
        assert_eq!(c.sink.as_deref(), Some("nodelocal://1/cf"));
        assert_eq!(
            c.options,
            vec![
                ("updated".to_string(), None),
                ("resolved".to_string(), Some("10s".to_string())),
                ("format".to_string(), Some("json".to_string())),
                ("initial_scan".to_string(), Some("only".to_string())),
            ]
        );
        assert!(
            c.statement
                .starts_with("CREATE CHANGEFEED FOR TABLE db.public.t")
        );
        let c = parsed("CREATE CHANGEFEED FOR t WITH OPTIONS (diff, no_initial_scan)");
        assert_eq!(c.sink, None);
        assert_eq!(c.options.len(), 2);
    }

    #[test]
    fn show_changefeed_jobs() {
        assert!(matches!(
            parse_one("SHOW CHANGEFEED JOBS"),
            Ok(Statement::ShowChangefeedJobs(None))
        ));
        assert!(matches!(
            parse_one("SHOW CHANGEFEED JOB 12"),
            Ok(Statement::ShowChangefeedJobs(Some(_)))
        ));
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "CREATE CHANGEFEED t",
            "CREATE CHANGEFEED FOR TABLE t INTO nodelocal",
            "CREATE CHANGEFEED FOR TABLE t WITH = 1",
        ] {
            let e = parse_one(bad).expect_err(bad);
            assert_eq!(e.code(), "42601", "{bad}: {e}");
        }
    }
}
