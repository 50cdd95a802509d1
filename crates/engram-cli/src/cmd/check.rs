//! `engram check MODELS...`: before a merge, what differs across models (tensors, shapes,
//! vocabulary sizes, tokenizer files, dtypes) and what `engram merge` does with each.

use super::Ctx;
use super::models::open;
use super::util::{column, emit, outln, print_json};
use anyhow::Result;
use engram_weights::compat::{CompatReport, Finding, check};
use std::path::PathBuf;

/// Exit status when the merge would fail (1 is any other error, 2 a usage error).
pub const EXIT_INCOMPATIBLE: i32 = 3;

#[derive(clap::Args)]
#[command(
    after_help = "Differences are measured against the template, the model the merged output follows: the base if --base is given, else the first model. Each finding says what `engram merge` does with it: an error (the merge refuses), keep the base's tensor, copy the template's, leave the tensor out, convert the dtype, or carry the template's side file.\n\nExit status: 0 when the models merge (warnings only), 3 when `engram merge` would refuse them, 1 on any other error (a model that does not open), 2 on a usage error.\n\nExamples:\n  engram check ft-1/ ft-2/\n  engram check --base base/ --allow-missing ft-1/ ft-2/ --json"
)]
pub struct Args {
    /// The models to compare (files or folders): two or more, or one with --base.
    #[arg(required = true, num_args = 1..)]
    pub models: Vec<PathBuf>,
    /// The base model of the merge: the template the others are compared with.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Judge the merge as `engram merge --allow-missing` runs it.
    #[arg(long)]
    pub allow_missing: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    let base = a.base.as_deref().map(open).transpose()?;
    let models = a
        .models
        .iter()
        .map(|p| open(p))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<_> = models.iter().collect();
    let rep = check(base.as_ref(), &refs, a.allow_missing)?;
    if a.json {
        print_json(&serde_json::json!({"engram_check": 1, "report": rep}))?;
    } else if !ctx.quiet {
        emit(&table(&rep))?;
    }
    if !rep.compatible {
        // The report is the output; the status tells scripts that the merge would fail.
        return Err(super::ctx::Exit(EXIT_INCOMPATIBLE).into());
    }
    Ok(())
}

/// A value as shown in the table: content hashes shortened, absent as `-`.
fn cell(v: &Option<String>) -> String {
    match v.as_deref() {
        None => "-".into(),
        Some(h) if h.starts_with("fnv1a64:") => h.get(8..16).unwrap_or(h).to_string(),
        Some(v) => v.to_string(),
    }
}

fn table(rep: &CompatReport) -> String {
    let mut o = String::new();
    let role = if rep.has_base {
        "the base"
    } else {
        "the first model"
    };
    outln!(
        o,
        "{} models, {} tensors in the template ({role}, {}); {} finding(s), {} error(s)",
        rep.models.len(),
        rep.tensors,
        rep.template,
        rep.findings.len(),
        rep.errors()
    );
    for (i, (m, v)) in rep.models.iter().zip(&rep.vocab_sizes).enumerate() {
        let v = v.map_or("unknown".into(), |v| v.to_string());
        outln!(o, "  #{i} {m} (vocabulary {v})");
    }
    // Findings that differ only in the tensor share a row (a dtype that differs in every
    // tensor is one line); the JSON keeps one finding per tensor.
    let mut rows: Vec<(&Finding, Vec<&Finding>)> = Vec::new();
    for f in &rep.findings {
        let same = |g: &&Finding| {
            (g.kind, &g.values, g.action, &g.behaviour, g.file.is_some())
                == (f.kind, &f.values, f.action, &f.behaviour, f.file.is_some())
        };
        match rows.iter_mut().find(|(g, _)| same(g)) {
            Some((_, group)) => group.push(f),
            None => rows.push((f, vec![f])),
        }
    }
    if !rows.is_empty() {
        let what = |group: &[&Finding]| {
            let f = group[0];
            let name = f.tensor.clone().or(f.file.clone()).unwrap_or_default();
            match group.len() {
                1 => name,
                n => format!("{name} (+{} more)", n - 1),
            }
        };
        let kind = |f: &Finding| {
            serde_json::to_value(f.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        };
        let kw = column(rows.iter().map(|(f, _)| kind(f).len()), 4);
        let nw = column(rows.iter().map(|(_, g)| what(g).chars().count()), 13);
        let vw: Vec<usize> = (0..rep.models.len())
            .map(|i| {
                column(
                    rows.iter().map(|(f, _)| cell(&f.values[i]).chars().count()),
                    2 + i.to_string().len(),
                )
            })
            .collect();
        let mut head = format!("{:<kw$}  {:<nw$}", "kind", "tensor / file");
        for (i, w) in vw.iter().enumerate() {
            head.push_str(&format!("  {:<w$}", format!("#{i}")));
        }
        outln!(o);
        outln!(o, "{head}  merge");
        for (f, group) in &rows {
            let mut row = format!("{:<kw$}  {:<nw$}", kind(f), what(group));
            for (v, w) in f.values.iter().zip(&vw) {
                row.push_str(&format!("  {:<w$}", cell(v)));
            }
            outln!(o, "{row}  {}", f.behaviour);
        }
        outln!(o);
    }
    if rep.compatible {
        let warn = match rep.findings.len() {
            0 => "no differences".to_string(),
            n => format!("{n} warning(s)"),
        };
        outln!(o, "merge-compatible: {warn}");
    } else {
        outln!(
            o,
            "not merge-compatible: `engram merge` would refuse these models ({} error(s)); exit status {EXIT_INCOMPATIBLE}",
            rep.errors()
        );
    }
    o
}
