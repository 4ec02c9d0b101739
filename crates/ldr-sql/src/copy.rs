//! `COPY table [(columns)] FROM STDIN`: the statement's options, and the parsing of the data
//! the client streams (PostgreSQL's text and CSV formats) into rows of text fields. The wire
//! protocol (`protocol.rs`) collects the data and inserts the rows.

use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::error::{Result, SqlError, sqlstate};

/// SQLSTATE `bad_copy_file_format`.
pub const BAD_COPY_FORMAT: &str = "22P04";

/// What a `COPY … FROM STDIN` statement asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct CopySpec {
    /// The table as written (possibly qualified and quoted).
    pub table: String,
    /// The columns as written; empty means every visible column.
    pub columns: Vec<String>,
    /// For `COPY … TO STDOUT`: the query whose rows are sent.
    pub to_query: Option<String>,
    pub csv: bool,
    pub delimiter: char,
    /// The field text that means NULL (`\N` in text format, an unquoted empty field in CSV).
    pub null: String,
    pub header: bool,
    pub quote: char,
    pub escape: char,
}

/// Whether `query` is a lone COPY statement; `Some(Err)` for a COPY we do not serve.
pub fn parse_copy(query: &str) -> Option<Result<CopySpec>> {
    let text = query.trim_start();
    let first = text.split(|c: char| c.is_whitespace() || c == '(').next()?;
    if !first.eq_ignore_ascii_case("COPY") {
        return None;
    }
    Some(parse_spec(text))
}

fn parse_spec(text: &str) -> Result<CopySpec> {
    // sqlparser reads whatever follows `FROM STDIN;` as inline data: refuse a second statement.
    let mut in_quote = false;
    let body = text.trim_end().trim_end_matches(';');
    if body.chars().any(|c| {
        if c == '\'' {
            in_quote = !in_quote;
        }
        c == ';' && !in_quote
    }) {
        return Err(SqlError::unsupported("COPY together with other statements"));
    }
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, text)
        .map_err(|e| SqlError::new(sqlstate::SYNTAX_ERROR, e.to_string()))?;
    if statements.len() != 1 {
        return Err(SqlError::unsupported("COPY together with other statements"));
    }
    let Statement::Copy {
        source,
        to,
        target,
        options,
        legacy_options,
        values,
    } = statements.remove(0)
    else {
        return Err(SqlError::unsupported("this COPY statement"));
    };
    match (to, &target) {
        (false, CopyTarget::Stdin) | (true, CopyTarget::Stdout) => {}
        (false, _) => {
            return Err(SqlError::unsupported(
                "COPY FROM a file or program; use FROM STDIN",
            ));
        }
        (true, _) => {
            return Err(SqlError::unsupported(
                "COPY TO a file or program; use TO STDOUT",
            ));
        }
    }
    if !values.is_empty() {
        return Err(SqlError::unsupported("COPY data inline with the statement"));
    }
    let (table, columns, to_query) = match source {
        CopySource::Table {
            table_name,
            columns,
        } => {
            let table = table_name.to_string();
            let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
            let query = to.then(|| {
                let list = if columns.is_empty() {
                    "*".to_string()
                } else {
                    columns.join(", ")
                };
                format!("SELECT {list} FROM {table}")
            });
            (table, columns, query)
        }
        CopySource::Query(query) if to => (String::new(), Vec::new(), Some(query.to_string())),
        CopySource::Query(_) => return Err(SqlError::unsupported("COPY FROM a query")),
    };
    let mut spec = CopySpec {
        table,
        columns,
        to_query,
        csv: false,
        delimiter: '\t',
        null: "\\N".into(),
        header: false,
        quote: '"',
        escape: '"',
    };
    let (mut delimiter, mut null, mut escape) = (None, None, None);
    for option in options {
        match option {
            CopyOption::Format(name) => match name.value.to_ascii_lowercase().as_str() {
                "csv" => spec.csv = true,
                "text" => spec.csv = false,
                other => return Err(SqlError::unsupported(format!("COPY format {other}"))),
            },
            CopyOption::Delimiter(c) => delimiter = Some(c),
            CopyOption::Null(s) => null = Some(s),
            CopyOption::Header(h) => spec.header = h,
            CopyOption::Quote(c) => spec.quote = c,
            CopyOption::Escape(c) => escape = Some(c),
            CopyOption::Encoding(e)
                if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
            other => return Err(SqlError::unsupported(format!("COPY option {other}"))),
        }
    }
    for option in legacy_options {
        match option {
            CopyLegacyOption::Csv(csv_options) => {
                spec.csv = true;
                for o in csv_options {
                    match o {
                        CopyLegacyCsvOption::Header => spec.header = true,
                        CopyLegacyCsvOption::Quote(c) => spec.quote = c,
                        CopyLegacyCsvOption::Escape(c) => escape = Some(c),
                        other => {
                            return Err(SqlError::unsupported(format!("COPY option {other}")));
                        }
                    }
                }
            }
            CopyLegacyOption::Delimiter(c) => delimiter = Some(c),
            CopyLegacyOption::Null(s) => null = Some(s),
            CopyLegacyOption::Header => spec.header = true,
            other => return Err(SqlError::unsupported(format!("COPY option {other}"))),
        }
    }
    if spec.csv {
        spec.delimiter = ',';
        spec.null = String::new();
    } else if spec.header {
        return Err(SqlError::unsupported("COPY HEADER in text format; use CSV"));
    }
    if let Some(d) = delimiter {
        spec.delimiter = d;
    }
    if let Some(n) = null {
        spec.null = n;
    }
    spec.escape = escape.unwrap_or(spec.quote);
    if matches!(spec.delimiter, '\n' | '\r' | '\\') || (spec.csv && spec.delimiter == spec.quote) {
        return Err(SqlError::new(
            "22023",
            "COPY delimiter must not be a newline, a backslash or the quote character",
        ));
    }
    Ok(spec)
}

/// Splits COPY data into rows of fields (`None` for NULL), `columns` fields per row.
pub fn parse_rows(
    spec: &CopySpec,
    data: &[u8],
    columns: usize,
) -> Result<Vec<Vec<Option<String>>>> {
    let text = std::str::from_utf8(data).map_err(|e| {
        SqlError::new(
            "22021",
            format!("invalid byte sequence for encoding \"UTF8\": {e}"),
        )
    })?;
    let records = if spec.csv {
        csv_records(spec, text)?
    } else {
        text_records(spec, text)?
    };
    let skip = usize::from(spec.header);
    let mut rows = Vec::with_capacity(records.len().saturating_sub(skip));
    for (i, fields) in records.into_iter().enumerate().skip(skip) {
        let line = i + 1;
        if fields.len() > columns {
            return Err(SqlError::new(
                BAD_COPY_FORMAT,
                format!("extra data after last expected column (line {line})"),
            ));
        }
        if fields.len() < columns {
            return Err(SqlError::new(
                BAD_COPY_FORMAT,
                format!(
                    "missing data for column {} (line {line}): expected {columns} fields, found {}",
                    fields.len() + 1,
                    fields.len()
                ),
            ));
        }
        rows.push(fields);
    }
    Ok(rows)
}

/// PostgreSQL's text format: one row per line, fields split by the delimiter, backslash
/// escapes, the null string compared before unescaping, `\.` ends the data.
fn text_records(spec: &CopySpec, text: &str) -> Result<Vec<Vec<Option<String>>>> {
    let mut records = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    for (n, line) in lines.iter().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line == "\\." {
            break;
        }
        if line.is_empty() && n + 1 == lines.len() {
            break;
        }
        let mut fields = Vec::new();
        let mut raw = String::new();
        let mut chars = line.chars().peekable();
        let finish = |raw: &mut String, fields: &mut Vec<Option<String>>| -> Result<()> {
            let field = std::mem::take(raw);
            fields.push(if field == spec.null {
                None
            } else {
                Some(unescape_text(&field, n + 1)?)
            });
            Ok(())
        };
        while let Some(c) = chars.next() {
            if c == '\\' {
                raw.push(c);
                if let Some(next) = chars.next() {
                    raw.push(next);
                }
            } else if c == spec.delimiter {
                finish(&mut raw, &mut fields)?;
            } else {
                raw.push(c);
            }
        }
        finish(&mut raw, &mut fields)?;
        records.push(fields);
    }
    Ok(records)
}

fn unescape_text(raw: &str, line: usize) -> Result<String> {
    if !raw.contains('\\') {
        return Ok(raw.to_string());
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(e) = chars.next() else {
            return Err(SqlError::new(
                BAD_COPY_FORMAT,
                format!("unterminated backslash escape (line {line})"),
            ));
        };
        match e {
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\u{b}'),
            '0'..='7' => {
                let mut value = e.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match chars.peek().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            value = value * 8 + d;
                            chars.next();
                        }
                        None => break,
                    }
                }
                out.push(char::from_u32(value).unwrap_or('\u{fffd}'));
            }
            'x' => {
                let mut value = 0;
                let mut digits = 0;
                while digits < 2 {
                    match chars.peek().and_then(|d| d.to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d;
                            digits += 1;
                            chars.next();
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    out.push('x');
                } else {
                    out.push(char::from_u32(value).unwrap_or('\u{fffd}'));
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// CSV: quoted fields may hold delimiters, newlines and doubled quotes; an unquoted field
/// equal to the null string is NULL (a quoted one never is); `\.` alone on a line ends the data.
fn csv_records(spec: &CopySpec, text: &str) -> Result<Vec<Vec<Option<String>>>> {
    let mut records = Vec::new();
    let mut fields: Vec<Option<String>> = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    let mut line = 1;
    let mut at_line_start = true;
    let mut chars = text.chars().peekable();
    let end_field = |field: &mut String, quoted: &mut bool, fields: &mut Vec<Option<String>>| {
        let value = std::mem::take(field);
        fields.push(if !*quoted && value == spec.null {
            None
        } else {
            Some(value)
        });
        *quoted = false;
    };
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == spec.escape && chars.peek() == Some(&spec.quote) && spec.escape != spec.quote {
                field.push(spec.quote);
                chars.next();
            } else if c == spec.quote {
                if spec.escape == spec.quote && chars.peek() == Some(&spec.quote) {
                    field.push(spec.quote);
                    chars.next();
                } else {
                    in_quotes = false;
                }
            } else {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
            continue;
        }
        if at_line_start && c == '\\' && chars.peek() == Some(&'.') {
            let rest: String = chars.clone().skip(1).take(2).collect();
            if rest.is_empty() || rest.starts_with('\n') || rest.starts_with("\r\n") {
                return Ok(records);
            }
        }
        at_line_start = false;
        if c == spec.quote {
            in_quotes = true;
            quoted = true;
        } else if c == spec.delimiter {
            end_field(&mut field, &mut quoted, &mut fields);
        } else if c == '\n' || c == '\r' {
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            end_field(&mut field, &mut quoted, &mut fields);
            records.push(std::mem::take(&mut fields));
            line += 1;
            at_line_start = true;
        } else {
            field.push(c);
        }
    }
    if in_quotes {
        return Err(SqlError::new(
            BAD_COPY_FORMAT,
            format!("unterminated CSV quoted field (line {line})"),
        ));
    }
    if !at_line_start {
        end_field(&mut field, &mut quoted, &mut fields);
        records.push(fields);
    }
    Ok(records)
}

/// Appends one row of `COPY … TO` output (fields already in PostgreSQL's text form).
pub fn format_row(spec: &CopySpec, fields: &[Option<String>], out: &mut Vec<u8>) {
    let mut line = String::new();
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            line.push(spec.delimiter);
        }
        match field {
            None => line.push_str(&spec.null),
            Some(value) if spec.csv => {
                let needs_quotes = value.is_empty()
                    || *value == spec.null
                    || value.starts_with("\\.")
                    || value.contains([spec.delimiter, spec.quote, '\n', '\r']);
                if needs_quotes {
                    line.push(spec.quote);
                    for c in value.chars() {
                        if c == spec.quote || c == spec.escape {
                            line.push(spec.escape);
                        }
                        line.push(c);
                    }
                    line.push(spec.quote);
                } else {
                    line.push_str(value);
                }
            }
            Some(value) => {
                for c in value.chars() {
                    match c {
                        '\\' => line.push_str("\\\\"),
                        '\n' => line.push_str("\\n"),
                        '\r' => line.push_str("\\r"),
                        '\t' if spec.delimiter == '\t' => line.push_str("\\t"),
                        c if c == spec.delimiter => {
                            line.push('\\');
                            line.push(c);
                        }
                        c => line.push(c),
                    }
                }
            }
        }
    }
    line.push('\n');
    out.extend_from_slice(line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(sql: &str) -> CopySpec {
        parse_copy(sql).expect("a COPY").expect("valid")
    }

    fn strs(rows: &[Vec<Option<String>>]) -> Vec<Vec<Option<&str>>> {
        rows.iter()
            .map(|r| r.iter().map(|f| f.as_deref()).collect())
            .collect()
    }

    #[test]
    fn statement_options() {
        assert!(parse_copy("SELECT 1").is_none());
        assert!(parse_copy("COPYé").is_none());
        assert!(parse_copy("copy\tt from stdin").is_some());
        let s = spec("COPY t FROM STDIN");
        assert_eq!((s.table.as_str(), s.csv, s.delimiter), ("t", false, '\t'));
        assert_eq!(s.null, "\\N");
        let s = spec("copy db.public.t (a, \"B\") from stdin with csv header");
        assert_eq!(s.table, "db.public.t");
        assert_eq!(s.columns, vec!["a", "\"B\""]);
        assert!(s.csv && s.header && s.delimiter == ',' && s.null.is_empty());
        let s = spec("COPY t FROM STDIN WITH (FORMAT csv, DELIMITER '|', NULL 'nil', HEADER true)");
        assert!(s.csv && s.header && s.delimiter == '|' && s.null == "nil");
        let s = spec("COPY t (a, b) TO STDOUT WITH CSV");
        assert_eq!(s.to_query.as_deref(), Some("SELECT a, b FROM t"));
        let s = spec("COPY (SELECT a FROM t WHERE a > 1) TO STDOUT");
        assert_eq!(s.to_query.as_deref(), Some("SELECT a FROM t WHERE a > 1"));
        assert!(spec("COPY t FROM STDIN").to_query.is_none());
        for bad in [
            "COPY t TO '/tmp/x'",
            "COPY t FROM '/etc/passwd'",
            "COPY t FROM STDIN WITH (FORMAT binary)",
            "COPY t FROM STDIN WITH (HEADER true)",
            "COPY t FROM STDIN; SELECT 1",
        ] {
            let e = parse_copy(bad).expect("a COPY").expect_err(bad);
            assert_eq!(e.code(), "0A000", "{bad}: {}", e.message());
        }
        assert_eq!(
            parse_copy("COPY FROM")
                .expect("a COPY")
                .expect_err("syntax")
                .code(),
            "42601"
        );
    }

    #[test]
    fn text_format() {
        let s = spec("COPY t FROM STDIN");
        let rows = parse_rows(
            &s,
            b"1\tone\n2\t\\N\n3\ta\\tb\\\\c\\n\\101\\x42\n\\.\nignored\n",
            2,
        )
        .expect("parses");
        assert_eq!(
            strs(&rows),
            vec![
                vec![Some("1"), Some("one")],
                vec![Some("2"), None],
                vec![Some("3"), Some("a\tb\\c\nAB")],
            ]
        );
        // An escaped delimiter is data; CRLF line ends; no trailing newline.
        let rows = parse_rows(&s, b"1\tx\\\ty\r\n2\t", 2).expect("parses");
        assert_eq!(
            strs(&rows),
            vec![vec![Some("1"), Some("x\ty")], vec![Some("2"), Some("")]]
        );
        let e = parse_rows(&s, b"1\ttwo\tthree\n", 2).expect_err("too many");
        assert_eq!(e.code(), BAD_COPY_FORMAT);
        let e = parse_rows(&s, b"1\n", 2).expect_err("too few");
        assert!(
            e.message().contains("missing data for column 2 (line 1)"),
            "{}",
            e.message()
        );
        assert_eq!(
            parse_rows(&s, &[0xff, b'\n'], 1).expect_err("utf8").code(),
            "22021"
        );
    }

    #[test]
    fn output_round_trips_through_the_parser() {
        let rows = vec![
            vec![
                Some("1".to_string()),
                Some("tab\there, \"q\"\nline\\".to_string()),
            ],
            vec![Some("2".to_string()), None],
            vec![Some("3".to_string()), Some(String::new())],
        ];
        for sql in ["COPY t TO STDOUT", "COPY t TO STDOUT WITH CSV"] {
            let s = spec(sql);
            let mut out = Vec::new();
            for row in &rows {
                format_row(&s, row, &mut out);
            }
            assert_eq!(parse_rows(&s, &out, 2).expect(sql), rows, "{sql}");
        }
    }

    #[test]
    fn csv_format() {
        let s = spec("COPY t FROM STDIN WITH CSV HEADER");
        let data = b"id,name\n1,\"a, \"\"quoted\"\"\nline\"\n2,\n3,\"\"\n\\.\n";
        let rows = parse_rows(&s, data, 2).expect("parses");
        assert_eq!(
            strs(&rows),
            vec![
                vec![Some("1"), Some("a, \"quoted\"\nline")],
                vec![Some("2"), None],
                vec![Some("3"), Some("")],
            ]
        );
        let e = parse_rows(&s, b"h\n1,\"open\n", 2).expect_err("unterminated");
        assert_eq!(e.code(), BAD_COPY_FORMAT);
    }
}
