//! `SHOW CREATE TABLE`: a table descriptor rendered as the statement that creates it.

use crate::catalog::{IndexDescriptor, TableDescriptor};
use crate::datum::quote_ident;
use crate::error::Result;

/// `SHOW CREATE TABLE` text, as CockroachDB prints it.
pub(super) async fn show_create(
    catalog: &crate::catalog::Catalog,
    desc: &TableDescriptor,
) -> Result<String> {
    let mut lines: Vec<String> = Vec::new();
    for c in &desc.columns {
        let mut l = format!("\t{} {}", quote_ident(&c.name), c.ty.sql_name());
        if c.hidden {
            l.push_str(" NOT VISIBLE");
        }
        l.push_str(if c.nullable { " NULL" } else { " NOT NULL" });
        if let Some(d) = &c.default_expr {
            l.push_str(&format!(" DEFAULT {d}"));
        }
        lines.push(l);
    }
    let cols = |idx: &IndexDescriptor| -> String {
        idx.columns
            .iter()
            .map(|ic| {
                let name = desc
                    .column_by_id(ic.column_id)
                    .map(|c| quote_ident(&c.name))
                    .unwrap_or_default();
                format!("{name} {}", if ic.descending { "DESC" } else { "ASC" })
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    lines.push(format!(
        "\tCONSTRAINT {} PRIMARY KEY ({})",
        quote_ident(&desc.primary_index.name),
        cols(&desc.primary_index)
    ));
    for idx in desc.indexes.iter().filter(|i| !i.write_only) {
        let mut l = format!(
            "\t{}INDEX {} ({})",
            if idx.unique { "UNIQUE " } else { "" },
            quote_ident(&idx.name),
            cols(idx)
        );
        if !idx.storing.is_empty() {
            let st: Vec<String> = idx
                .storing
                .iter()
                .filter_map(|id| desc.column_by_id(*id).map(|c| quote_ident(&c.name)))
                .collect();
            l.push_str(&format!(" STORING ({})", st.join(", ")));
        }
        lines.push(l);
    }
    for fk in &desc.foreign_keys {
        let parent = catalog.table_by_id(fk.ref_table_id).await?;
        let (pname, pcols) = match &parent {
            Some(p) => (
                format!("{}.{}", p.schema, quote_ident(&p.name)),
                fk.ref_columns
                    .iter()
                    .filter_map(|id| p.column_by_id(*id).map(|c| quote_ident(&c.name)))
                    .collect::<Vec<_>>(),
            ),
            None => (format!("[{}]", fk.ref_table_id), vec![]),
        };
        let own: Vec<String> = fk
            .columns
            .iter()
            .filter_map(|id| desc.column_by_id(*id).map(|c| quote_ident(&c.name)))
            .collect();
        lines.push(format!(
            "\tCONSTRAINT {} FOREIGN KEY ({}) REFERENCES {}({})",
            quote_ident(&fk.name),
            own.join(", "),
            pname,
            pcols.join(", ")
        ));
    }
    for c in &desc.checks {
        lines.push(format!(
            "\tCONSTRAINT {} CHECK ({})",
            quote_ident(&c.name),
            c.expr
        ));
    }
    let mut out = format!(
        "CREATE TABLE {}.{} (\n{}\n)",
        desc.schema,
        quote_ident(&desc.name),
        lines.join(",\n")
    );
    if !desc.storage_params.is_empty() {
        let params: Vec<String> = desc
            .storage_params
            .iter()
            .map(|(k, v)| {
                if v == "true" || v == "false" || v.parse::<i64>().is_ok() {
                    format!("{k} = {v}")
                } else {
                    format!("{k} = {}", crate::datum::quote_literal(v))
                }
            })
            .collect();
        out.push_str(&format!(" WITH ({})", params.join(", ")));
    }
    Ok(out)
}
