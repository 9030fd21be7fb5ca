//! `flowers architectures`: every backbone `--architecture` knows, and whether it is on disk.

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use crate::backbone::registry::{self, Origin};
use crate::exit;
use crate::options::ArchitecturesOptions;

#[derive(Serialize)]
struct Row<'a> {
    name: &'a str,
    format: &'static str,
    bytes: Option<u64>,
    source: String,
    on_disk: bool,
    about: &'a str,
}

/// Prints the table (or JSON lines) on `out`.
pub fn run_command(options: &ArchitecturesOptions, out: &mut dyn Write) -> Result<u8> {
    let all = registry::all();
    let rows: Vec<Row> = all
        .iter()
        .map(|a| Row {
            name: &a.name,
            format: a.format.as_str(),
            bytes: a.size(),
            source: a.source(),
            on_disk: match a.origin {
                Origin::Embedded => true,
                _ => a.path_in(&options.model_dir).is_some_and(|p| p.is_file()),
            },
            about: a.about,
        })
        .collect();
    if options.json {
        for row in &rows {
            let mut line = serde_json::to_vec(row).map_err(std::io::Error::other)?;
            line.push(b'\n');
            out.write_all(&line)?;
        }
        return Ok(exit::SUCCESS);
    }
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4);
    writeln!(
        out,
        "{:<width$}  {:<10}  {:>9}  {:<7}  source",
        "name", "format", "size", "on disk"
    )?;
    for row in &rows {
        let size = row
            .bytes
            .map_or("?".to_string(), |b| format!("{:.1} MB", b as f64 / 1e6));
        let on_disk = if row.on_disk { "yes" } else { "no" };
        writeln!(
            out,
            "{:<width$}  {:<10}  {:>9}  {:<7}  {}",
            row.name, row.format, size, on_disk, row.source
        )?;
    }
    writeln!(out, "\nDownloads go to {}", options.model_dir.display())?;
    Ok(exit::SUCCESS)
}
