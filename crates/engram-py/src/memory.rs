//! In-memory state dicts: a `dict[str, numpy.ndarray]` becomes an engram model without copying
//! (each array's buffer is its tensor's bytes), and a model written to a temporary folder comes
//! back as a dict of new arrays, each made from one vector (one copy out of the file).
//!
//! Arrays that are not C-contiguous, or not in native byte order, are copied first (NumPy's
//! `ascontiguousarray` / `astype`). The arrays are kept alive, and must not be written to, while
//! a call runs (it runs without the GIL).

use crate::files::{analyze_report, quant_spec};
use crate::opts::{self, QuickMerge, finite, opt_float_dtype};
use crate::{Bar, arg_err, engram_err, to_py};
use engram_bench::analyze::AnalyzeOptions;
use engram_ckpt::file::MemTensor;
use engram_ckpt::{DType, Model, TensorView};
use engram_weights::merge::engine::run_merge;
use engram_weights::quant::model::{Options, quantize_model};
use engram_weights::spelling::Spelling;
use engram_weights::tall::Tall;
use engram_weights::tall_options::TallOptions;
use numpy::{
    Element, PyArray1, PyArrayDescrMethods, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An array's buffer, borrowed for as long as the model that holds it: the array object is
/// owned here, so its memory cannot be freed before the model is dropped.
struct ArrayBytes {
    _owner: Py<PyAny>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the buffer is only read, and stays allocated while `_owner` holds the array (a NumPy
// array that others reference cannot be resized). `Py` may be dropped on any thread.
unsafe impl Send for ArrayBytes {}
unsafe impl Sync for ArrayBytes {}

impl AsRef<[u8]> for ArrayBytes {
    fn as_ref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` is the data of a C-contiguous array of `len` bytes, alive (above).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".into(), |n| n.to_string())
}

/// The engram dtype of a NumPy dtype: floats, integers and bool by kind and size, and
/// ml_dtypes' bfloat16 and float8 types by name.
fn dtype_of(arr: &Bound<'_, PyUntypedArray>) -> PyResult<Option<DType>> {
    let d = arr.dtype();
    let by_kind = match (d.kind(), d.itemsize()) {
        (b'f', 2) => Some(DType::F16),
        (b'f', 4) => Some(DType::F32),
        (b'f', 8) => Some(DType::F64),
        (b'i', 1) => Some(DType::I8),
        (b'i', 2) => Some(DType::I16),
        (b'i', 4) => Some(DType::I32),
        (b'i', 8) => Some(DType::I64),
        (b'u', 1) => Some(DType::U8),
        (b'u', 2) => Some(DType::U16),
        (b'u', 4) => Some(DType::U32),
        (b'u', 8) => Some(DType::U64),
        (b'b', 1) => Some(DType::Bool),
        _ => None,
    };
    if by_kind.is_some() {
        return Ok(by_kind);
    }
    let name: String = d.getattr("name")?.extract()?;
    Ok(match name.as_str() {
        "bfloat16" => Some(DType::BF16),
        "float8_e4m3fn" => Some(DType::F8E4M3),
        "float8_e5m2" => Some(DType::F8E5M2),
        _ => None,
    })
}

/// A dict of NumPy arrays as a model named `label` (errors name it and the tensor).
pub(crate) fn model_from_dict(label: &str, obj: &Bound<'_, PyAny>) -> PyResult<Model> {
    let py = obj.py();
    let d = obj.downcast::<PyDict>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{label}: expected a dict of tensor name to numpy.ndarray, got {}",
            type_name(obj)
        ))
    })?;
    let np = py.import("numpy")?;
    let mut tensors = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        let name: String = k.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "{label}: tensor names must be strings, got {}",
                type_name(&k)
            ))
        })?;
        let mut arr = v
            .downcast::<PyUntypedArray>()
            .map_err(|_| {
                PyTypeError::new_err(format!(
                    "{label}: tensor '{name}' is a {}, not a numpy.ndarray (torch users pass {{k: v.numpy()}})",
                    type_name(&v)
                ))
            })?
            .clone();
        if arr.dtype().is_native_byteorder() == Some(false) {
            let native = arr.dtype().call_method1("newbyteorder", ("=",))?;
            arr = arr
                .call_method1("astype", (native,))?
                .downcast_into::<PyUntypedArray>()?;
        }
        if !arr.is_c_contiguous() {
            arr = np
                .call_method1("ascontiguousarray", (&arr,))?
                .downcast_into::<PyUntypedArray>()?;
        }
        let Some(dtype) = dtype_of(&arr)? else {
            return Err(PyTypeError::new_err(format!(
                "{label}: tensor '{name}' has dtype {}, which engram does not store; use float16/32/64, bfloat16 or float8 (ml_dtypes), int8 to int64, uint8 to uint64 or bool",
                arr.dtype()
            )));
        };
        let shape = arr.shape().to_vec();
        let len = shape
            .iter()
            .try_fold(dtype.size(), |a, &d| a.checked_mul(d))
            .ok_or_else(|| arg_err(format!("{label}: tensor '{name}': shape overflows")))?;
        // SAFETY: a NumPy array's object always points at its data (C-contiguous here).
        let ptr = unsafe { (*arr.as_array_ptr()).data as *const u8 };
        tensors.push(MemTensor {
            name,
            dtype,
            shape,
            bytes: Arc::new(ArrayBytes {
                _owner: arr.into_any().unbind(),
                ptr,
                len,
            }),
        });
    }
    Model::from_tensors(Path::new(label), tensors).map_err(|e| arg_err(e.to_string()))
}

/// The dicts of `models` as models `models[0]`, `models[1]`, ...
fn models_from_list(models: &Bound<'_, PyAny>) -> PyResult<Vec<Model>> {
    let list = models.downcast::<PyList>().map_err(|_| {
        PyTypeError::new_err(format!(
            "models: expected a list of dicts of numpy arrays, got {}",
            type_name(models)
        ))
    })?;
    list.iter()
        .enumerate()
        .map(|(i, m)| model_from_dict(&format!("models[{i}]"), &m))
        .collect()
}

/// Elements of `bytes` (little-endian, `N` bytes each) as a new array of `shape`.
fn typed<'py, T: Element, const N: usize>(
    py: Python<'py>,
    bytes: &[u8],
    shape: &[usize],
    f: fn([u8; N]) -> T,
) -> PyResult<Bound<'py, PyAny>> {
    let v: Vec<T> = bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect();
    Ok(PyArray1::from_vec(py, v)
        .reshape(shape.to_vec())?
        .into_any())
}

/// A tensor as a new NumPy array. bf16 and f8 come as ml_dtypes' types when ml_dtypes is
/// installed, else as their raw bits (uint16 / uint8).
fn array_of<'py>(py: Python<'py>, t: &TensorView) -> PyResult<Bound<'py, PyAny>> {
    let (b, s) = (t.bytes, t.shape());
    let raw = |kind: &str, arr: Bound<'py, PyAny>| -> PyResult<Bound<'py, PyAny>> {
        match py.import("ml_dtypes") {
            Ok(ml) => arr.call_method1("view", (ml.getattr(kind)?,)),
            Err(_) => Ok(arr),
        }
    };
    match t.dtype() {
        DType::F64 => typed(py, b, s, f64::from_le_bytes),
        DType::F32 => typed(py, b, s, f32::from_le_bytes),
        DType::F16 => typed(py, b, s, half::f16::from_le_bytes),
        DType::BF16 => raw("bfloat16", typed(py, b, s, u16::from_le_bytes)?),
        DType::F8E4M3 => raw("float8_e4m3fn", typed(py, b, s, |a: [u8; 1]| a[0])?),
        DType::F8E5M2 => raw("float8_e5m2", typed(py, b, s, |a: [u8; 1]| a[0])?),
        DType::I64 => typed(py, b, s, i64::from_le_bytes),
        DType::I32 => typed(py, b, s, i32::from_le_bytes),
        DType::I16 => typed(py, b, s, i16::from_le_bytes),
        DType::I8 => typed(py, b, s, i8::from_le_bytes),
        DType::U64 => typed(py, b, s, u64::from_le_bytes),
        DType::U32 => typed(py, b, s, u32::from_le_bytes),
        DType::U16 => typed(py, b, s, u16::from_le_bytes),
        DType::U8 => typed(py, b, s, |a: [u8; 1]| a[0]),
        DType::Bool => typed(py, b, s, |a: [u8; 1]| a[0] != 0),
    }
}

/// A model's tensors as a dict of new arrays, in model order.
fn model_to_dict<'py>(py: Python<'py>, m: &Model) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for t in m.tensors() {
        d.set_item(t.name(), array_of(py, &t)?)?;
    }
    Ok(d)
}

/// Runs `write` (which writes a model to the path it is given) without the GIL, into a
/// temporary folder, and reads the model back as a dict; the folder is then removed.
fn through_file<'py, R: Send>(
    py: Python<'py>,
    write: impl FnOnce(&Path) -> anyhow::Result<R> + Send,
) -> PyResult<(Bound<'py, PyDict>, R)> {
    let dir = tempfile::tempdir().map_err(engram_err)?;
    let out = dir.path().join("model.safetensors");
    let (model, r) = py
        .detach(|| -> anyhow::Result<_> {
            let r = write(&out)?;
            Ok((Model::open(&out)?, r))
        })
        .map_err(engram_err)?;
    let d = model_to_dict(py, &model)?;
    drop(model);
    drop(dir);
    Ok((d, r))
}

fn labels(n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| PathBuf::from(format!("models[{i}]")))
        .collect()
}

/// A merge of in-memory state dicts (the quick form of `engram merge`).
#[pyfunction]
#[pyo3(signature = (method, base, models, *, weights=None, density=None, lambda_=None, t=None,
    params=None, trim_scope=None, seed=None, out_dtype=None, allow_missing=false,
    check_finite=false, progress=false))]
#[allow(clippy::too_many_arguments)]
pub fn merge_tensors<'py>(
    py: Python<'py>,
    method: String,
    base: Option<&Bound<'py, PyAny>>,
    models: &Bound<'py, PyAny>,
    weights: Option<Vec<f64>>,
    density: Option<f64>,
    lambda_: Option<f64>,
    t: Option<f64>,
    params: Option<&Bound<'py, PyDict>>,
    trim_scope: Option<String>,
    seed: Option<u64>,
    out_dtype: Option<String>,
    allow_missing: bool,
    check_finite: bool,
    progress: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let q = QuickMerge {
        density,
        lambda: lambda_,
        t,
        params: opts::param_values(params)?,
        weights: weights.unwrap_or_default(),
        trim_scope,
        seed,
        out_dtype,
    };
    let base = base.map(|b| model_from_dict("base", b)).transpose()?;
    let models = models_from_list(models)?;
    let cfg = opts::quick_config(
        &method,
        base.as_ref().map(|_| PathBuf::from("base")),
        labels(models.len()),
        &q,
    )?;
    let (d, ()) = through_file(py, |out| {
        let req = cfg
            .request(base.as_ref(), &models)
            .with_allow_missing(allow_missing)
            .with_check_finite(check_finite);
        let bar = Bar::new(progress, req.total_params(), cfg.method.name());
        let r = run_merge(&req, out, &Default::default(), &|n| bar.inc(n));
        bar.finish();
        r?;
        Ok(())
    })?;
    Ok(d)
}

/// The TALL options over in-memory models: tasks `task1`, `task2`, ... unless named.
#[allow(clippy::too_many_arguments)]
fn tall_opts(
    n: usize,
    tasks: Option<Vec<String>>,
    lambda_: Option<f32>,
    lambdas: Option<Vec<f32>>,
    tau: String,
    density: Option<f64>,
) -> PyResult<TallOptions> {
    let tasks = tasks.unwrap_or_else(|| (1..=n).map(|i| format!("task{i}")).collect());
    opts::tall_options(
        PathBuf::from("base"),
        labels(n),
        Some(tasks),
        lambda_,
        lambdas,
        tau,
        density,
    )
}

/// TALL mask statistics over in-memory state dicts (`engram tall --json`).
#[pyfunction]
#[pyo3(signature = (base, models, *, tasks=None, lambda_=None, lambdas=None,
    tau="sum".to_string(), density=None, progress=false))]
#[allow(clippy::too_many_arguments)]
pub fn tall_tensors(
    py: Python<'_>,
    base: &Bound<'_, PyAny>,
    models: &Bound<'_, PyAny>,
    tasks: Option<Vec<String>>,
    lambda_: Option<f32>,
    lambdas: Option<Vec<f32>>,
    tau: String,
    density: Option<f64>,
    progress: bool,
) -> PyResult<Py<PyAny>> {
    let base = model_from_dict("base", base)?;
    let models = models_from_list(models)?;
    let o = tall_opts(models.len(), tasks, lambda_, lambdas, tau, density)?;
    let stats = py
        .detach(|| -> anyhow::Result<_> {
            let tall = o.tall(&base, &models)?;
            let bar = Bar::new(progress, base.param_count(), "masks");
            let s = tall.stats(&|n| bar.inc(n));
            bar.finish();
            Ok(s?)
        })
        .map_err(engram_err)?;
    to_py(py, &stats)
}

/// Consensus merging of in-memory state dicts (`engram consensus`).
#[pyfunction]
#[pyo3(signature = (base, models, *, k=2, alpha=1.0, out_dtype=None, tasks=None, lambda_=None,
    lambdas=None, tau="sum".to_string(), density=None, progress=false))]
#[allow(clippy::too_many_arguments)]
pub fn consensus_tensors<'py>(
    py: Python<'py>,
    base: &Bound<'py, PyAny>,
    models: &Bound<'py, PyAny>,
    k: usize,
    alpha: f32,
    out_dtype: Option<String>,
    tasks: Option<Vec<String>>,
    lambda_: Option<f32>,
    lambdas: Option<Vec<f32>>,
    tau: String,
    density: Option<f64>,
    progress: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let alpha = finite("alpha", alpha)?;
    let out_dtype = opt_float_dtype(out_dtype.as_deref())?;
    let base = model_from_dict("base", base)?;
    let models = models_from_list(models)?;
    opts::consensus_k(k, models.len())?;
    let o = tall_opts(models.len(), tasks, lambda_, lambdas, tau, density)?;
    let (d, ()) = through_file(py, |out| {
        let tall = o.tall(&base, &models)?;
        let bar = Bar::new(progress, base.param_count(), "consensus");
        let r = tall.write_model(
            out,
            out_dtype,
            &Default::default(),
            &|n| bar.inc(n),
            &Tall::consensus_kernel(k, alpha),
        );
        bar.finish();
        r?;
        Ok(())
    })?;
    Ok(d)
}

/// Quantization of an in-memory state dict (`engram quantize`): the packed tensors (codes,
/// scales and the rest of engram's layout, docs/quantization.md) and the report.
#[pyfunction]
#[pyo3(signature = (tensors, *, bits, method="rtn".to_string(), scope=None, group=None,
    asym=false, scale_dtype="f32".to_string(), grid=false, quantize_all=false, progress=false))]
#[allow(clippy::too_many_arguments)]
pub fn quantize_tensors<'py>(
    py: Python<'py>,
    tensors: &Bound<'py, PyAny>,
    bits: u32,
    method: String,
    scope: Option<String>,
    group: Option<usize>,
    asym: bool,
    scale_dtype: String,
    grid: bool,
    quantize_all: bool,
    progress: bool,
) -> PyResult<(Bound<'py, PyDict>, Py<PyAny>)> {
    let (q, spec) = quant_spec(
        &method,
        bits,
        scope.as_deref(),
        group,
        asym,
        &scale_dtype,
        grid,
    )?;
    let model = model_from_dict("tensors", tensors)?;
    let opts = Options {
        spec,
        quantize_all,
        metadata: Default::default(),
    };
    let (d, report) = through_file(py, |out| {
        let bar = Bar::new(progress, model.data_bytes(), "quantize");
        let r = quantize_model(&model, q, &opts, out, &|n| bar.inc(n));
        bar.finish();
        Ok(r?.0)
    })?;
    Ok((d, to_py(py, &report)?))
}

/// Spectral analysis of an in-memory state dict (`engram analyze --json`).
#[pyfunction]
#[pyo3(signature = (tensors, *, values=false, max_dim=4096, max_values=1 << 26, top_k=32, seed=0,
    include=None, exclude=None, progress=false))]
#[allow(clippy::too_many_arguments)]
pub fn analyze_tensors(
    py: Python<'_>,
    tensors: &Bound<'_, PyAny>,
    values: bool,
    max_dim: usize,
    max_values: usize,
    top_k: usize,
    seed: u64,
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    progress: bool,
) -> PyResult<Py<PyAny>> {
    let a = AnalyzeOptions {
        values,
        max_dim,
        max_values,
        top_k,
        seed,
        include: include.unwrap_or_default(),
        exclude: exclude.unwrap_or_default(),
        ..AnalyzeOptions::new("tensors".into())
    };
    a.check(Spelling::Keywords)
        .map_err(|e| arg_err(e.to_string()))?;
    let model = model_from_dict("tensors", tensors)?;
    let doc = py
        .detach(|| analyze_report(&model, &a, "", progress))
        .map_err(engram_err)?;
    to_py(py, &doc)
}
