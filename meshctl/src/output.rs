//! `-o table|json|yaml` for the read commands: one JSON value is the data, a table is made
//! from it for people.

use clap::ValueEnum;
use serde_json::Value;

/// How a read command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Prints `value` as JSON or YAML, or the text `table` makes from it (see [`render`]).
pub fn print(output: Output, value: &Value, table: impl FnOnce() -> String) -> anyhow::Result<()> {
    let text = match output {
        Output::Json => serde_json::to_string_pretty(value)?,
        Output::Yaml => serde_yaml::to_string(value)?,
        Output::Table => table(),
    };
    // A reader that went away (`| head`) is no error: what it wanted was printed.
    use std::io::Write as _;
    match writeln!(std::io::stdout().lock(), "{}", text.trim_end()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Rows as columns padded to their widest cell, two spaces apart.
pub fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned() {
        let rows = vec![
            vec!["NAME".to_owned(), "AGE".to_owned()],
            vec!["infra".to_owned(), "1.5s".to_owned()],
        ];
        assert_eq!(render(&rows), "NAME   AGE\ninfra  1.5s\n");
    }
}
