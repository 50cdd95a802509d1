//! engram-py: the Python module `engram._engram` (re-exported as `engram`), a thin front end
//! over the library crates like engram-cli: arguments in, one library call, a dict out.
//!
//! Each function makes the library call the matching CLI command makes, with the same defaults
//! and checks, so that its outputs equal the command's byte for byte (the recorded command line
//! aside: `command=`). Areas: `files` (commands on checkpoint files), `memory` (the same on
//! in-memory dicts of NumPy arrays), `train`, `opts` (arguments read for both forms). The
//! reports, checks and bars are the library's (engram-bench, engram-weights), shared with the
//! CLI. Long work runs with the GIL released.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use serde_json::Value;

mod files;
mod lora;
mod memory;
mod opts;
mod train;

create_exception!(
    _engram,
    EngramError,
    PyException,
    "An engram operation failed; the message is engram's (it names the file, tensor or key)."
);

/// An error of the library (a file, a tensor, a merge) as `EngramError`, with every cause on
/// one line, as the CLI prints it after `error: `.
pub(crate) fn engram_err(e: impl Into<anyhow::Error>) -> PyErr {
    EngramError::new_err(engram_bench::error_chain(&e.into()))
}

/// A bad argument (what the CLI reports before reading any file) as `ValueError`.
pub(crate) fn arg_err(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

/// A report as the Python object `json.loads` makes of the CLI's `--json` text: serialized
/// directly (an f32 field prints as the CLI prints it, not widened through a JSON value).
pub(crate) fn to_py(py: Python<'_>, v: &impl serde::Serialize) -> PyResult<Py<PyAny>> {
    let text = serde_json::to_string(v).map_err(engram_err)?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

/// A Python object (dict, list, numbers, strings) as JSON, through `json.dumps`.
pub(crate) fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    let text: String = obj
        .py()
        .import("json")?
        .call_method1("dumps", (obj,))?
        .extract()?;
    serde_json::from_str(&text).map_err(|e| arg_err(format!("not JSON-like data: {e}")))
}

/// The command recorded as provenance in the files a function writes: `command=` if given
/// (e.g. the CLI's command line, to write byte-identical files), else `python: engram.NAME`.
pub(crate) fn command(given: Option<String>, name: &str) -> String {
    given.unwrap_or_else(|| format!("python: engram.{name}"))
}

/// A progress bar on stderr (`engram_bench::bars`, as the CLI's; drawn only when stderr is a
/// terminal), or nothing when `progress=False`, the default: Python callers mostly run in
/// notebooks and scripts.
pub(crate) struct Bar(indicatif::ProgressBar);

impl Bar {
    pub(crate) fn new(show: bool, total: u64, msg: &str) -> Bar {
        Bar(engram_bench::bars::bar(show, total, msg))
    }

    pub(crate) fn set_length(&self, n: u64) {
        self.0.set_length(n);
    }

    pub(crate) fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    pub(crate) fn finish(&self) {
        self.0.finish_and_clear();
    }
}

#[pymodule]
fn _engram(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("EngramError", m.py().get_type::<EngramError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Checkpoint files, as the CLI commands.
    m.add_function(wrap_pyfunction!(files::inspect, m)?)?;
    m.add_function(wrap_pyfunction!(files::merge, m)?)?;
    m.add_function(wrap_pyfunction!(files::tall, m)?)?;
    m.add_function(wrap_pyfunction!(files::consensus, m)?)?;
    m.add_function(wrap_pyfunction!(files::compress, m)?)?;
    m.add_function(wrap_pyfunction!(files::extract, m)?)?;
    m.add_function(wrap_pyfunction!(files::quantize, m)?)?;
    m.add_function(wrap_pyfunction!(files::analyze, m)?)?;
    // In-memory state dicts.
    m.add_function(wrap_pyfunction!(memory::merge_tensors, m)?)?;
    m.add_function(wrap_pyfunction!(memory::tall_tensors, m)?)?;
    m.add_function(wrap_pyfunction!(memory::consensus_tensors, m)?)?;
    m.add_function(wrap_pyfunction!(memory::quantize_tensors, m)?)?;
    m.add_function(wrap_pyfunction!(memory::analyze_tensors, m)?)?;
    // LoRA adapters, as `engram lora extract|apply|merge`.
    m.add_function(wrap_pyfunction!(lora::lora_extract, m)?)?;
    m.add_function(wrap_pyfunction!(lora::lora_apply, m)?)?;
    m.add_function(wrap_pyfunction!(lora::lora_merge, m)?)?;
    // Training.
    m.add_function(wrap_pyfunction!(train::train, m)?)?;
    Ok(())
}
