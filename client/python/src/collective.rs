//! Collective operations for Python actors over Ember's engine (`ember::collective`): the
//! driver forms a group from actor handles; inside the actors, numpy arrays (their raw bytes
//! and dtype, from `ember.collective`) are combined with the same bits on every rank. Each
//! operation runs with the GIL released on the actor's thread, as a Rust actor's does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember::collective::{self, CollectiveError, Element, Group, ReduceOp};
use half::{bf16, f16};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::actor::Actor;
use crate::cluster::{current, error, wait};

/// The groups this actor has looked up, by name; dropped on an error, so that the next
/// operation looks the group up again (the driver may have formed a new generation).
static GROUPS: Mutex<Option<HashMap<String, Arc<Group>>>> = Mutex::new(None);

fn group(name: &str) -> Result<Arc<Group>, CollectiveError> {
    if let Some(g) = GROUPS
        .lock()
        .ok()
        .and_then(|m| m.as_ref().and_then(|m| m.get(name).cloned()))
    {
        return Ok(g);
    }
    let g = Arc::new(collective::group(name)?);
    remember(name, &g);
    Ok(g)
}

fn remember(name: &str, g: &Arc<Group>) {
    if let Ok(mut m) = GROUPS.lock() {
        m.get_or_insert_with(HashMap::new)
            .insert(name.to_string(), g.clone());
    }
}

fn forget(name: &str) {
    if let Ok(mut m) = GROUPS.lock() {
        if let Some(m) = m.as_mut() {
            m.remove(name);
        }
    }
}

fn reduce_op(op: &str) -> PyResult<ReduceOp> {
    Ok(match op {
        "sum" => ReduceOp::Sum,
        "mean" => ReduceOp::Mean,
        "min" => ReduceOp::Min,
        "max" => ReduceOp::Max,
        "product" | "prod" => ReduceOp::Product,
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown reduce op `{other}`: sum, mean, min, max or product"
            )))
        }
    })
}

/// One operation on elements of type `T`: `bytes` in, the result's bytes out.
enum Op {
    AllReduce(ReduceOp),
    ReduceScatter(ReduceOp),
    AllGather,
    Broadcast(usize),
}

fn run_typed<T: Element>(g: &Group, op: &Op, bytes: &[u8]) -> Result<Vec<u8>, CollectiveError> {
    let size = std::mem::size_of::<T>();
    if bytes.len() % size != 0 {
        return Err(CollectiveError::InvalidArgument(format!(
            "{} bytes are not whole elements of {size} bytes",
            bytes.len()
        )));
    }
    let mut buf = vec![T::zeroed(); bytes.len() / size];
    bytemuck::cast_slice_mut::<T, u8>(&mut buf).copy_from_slice(bytes);
    let out: Vec<T> = match op {
        Op::AllReduce(r) => {
            g.allreduce(&mut buf, *r)?;
            buf
        }
        Op::ReduceScatter(r) => {
            let range = g.reduce_scatter(&mut buf, *r)?;
            buf[range].to_vec()
        }
        Op::AllGather => g.allgather(&buf)?,
        Op::Broadcast(root) => {
            g.broadcast(&mut buf, *root)?;
            buf
        }
    };
    Ok(bytemuck::cast_slice(&out).to_vec())
}

fn run(
    g: &Group,
    op: &Op,
    dtype: &str,
    bytes: &[u8],
) -> PyResult<Result<Vec<u8>, CollectiveError>> {
    Ok(match dtype {
        "float32" => run_typed::<f32>(g, op, bytes),
        "float64" => run_typed::<f64>(g, op, bytes),
        "float16" => run_typed::<f16>(g, op, bytes),
        "bfloat16" => run_typed::<bf16>(g, op, bytes),
        "int32" => run_typed::<i32>(g, op, bytes),
        "int64" => run_typed::<i64>(g, op, bytes),
        other => {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "collective operations take float32, float64, float16, bfloat16, int32 or \
                 int64 arrays, not {other}"
            )))
        }
    })
}

/// Runs `op` of group `name` on `data` (elements of `dtype`) and returns the result's bytes.
fn operate<'py>(
    py: Python<'py>,
    name: &str,
    op: Op,
    dtype: &str,
    data: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let g = py.detach(|| group(name)).map_err(error)?;
    let out = py.detach(|| run(&g, &op, dtype, data));
    match out? {
        Ok(bytes) => Ok(PyBytes::new(py, &bytes)),
        Err(e) => {
            forget(name);
            Err(error(e))
        }
    }
}

/// Allreduce of `data` (raw elements of `dtype`) across group `name`, with `op`.
#[pyfunction]
fn allreduce<'py>(
    py: Python<'py>,
    name: &str,
    data: &[u8],
    dtype: &str,
    op: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    operate(py, name, Op::AllReduce(reduce_op(op)?), dtype, data)
}

/// Reduce-scatter: this rank's share of the combined `data`.
#[pyfunction]
fn reduce_scatter<'py>(
    py: Python<'py>,
    name: &str,
    data: &[u8],
    dtype: &str,
    op: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    operate(py, name, Op::ReduceScatter(reduce_op(op)?), dtype, data)
}

/// Every rank's `data`, in rank order.
#[pyfunction]
fn allgather<'py>(
    py: Python<'py>,
    name: &str,
    data: &[u8],
    dtype: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    operate(py, name, Op::AllGather, dtype, data)
}

/// `root`'s `data` on every rank.
#[pyfunction]
fn broadcast<'py>(
    py: Python<'py>,
    name: &str,
    data: &[u8],
    dtype: &str,
    root: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    operate(py, name, Op::Broadcast(root), dtype, data)
}

/// Returns once every rank of group `name` has called it.
#[pyfunction]
fn barrier(py: Python<'_>, name: &str) -> PyResult<()> {
    let r = py.detach(|| group(name).and_then(|g| g.barrier()));
    r.map_err(|e| {
        forget(name);
        error(e)
    })
}

/// This actor's rank and the group's size, looking group `name` up.
#[pyfunction]
fn rank_and_size(py: Python<'_>, name: &str) -> PyResult<(usize, usize)> {
    let g = py.detach(|| group(name)).map_err(error)?;
    Ok((g.rank(), g.size()))
}

/// Joins the next generation of group `name` from inside an actor; it forms once `world`
/// actors joined (ranks in the actors' creation order). Returns this actor's rank.
#[pyfunction]
fn join_group(py: Python<'_>, name: &str, world: u32, timeout: f64) -> PyResult<usize> {
    let g = py
        .detach(|| collective::join(name, world, Duration::from_secs_f64(timeout)))
        .map_err(error)?;
    let g = Arc::new(g);
    remember(name, &g);
    Ok(g.rank())
}

/// Forms a new generation of group `name` from `members` (actor handles, in rank order),
/// from the driver; returns its generation.
#[pyfunction]
fn form_group(py: Python<'_>, name: &str, members: Vec<Bound<'_, Actor>>) -> PyResult<u64> {
    let (runtime, cluster) = current()?;
    let mut refs = Vec::with_capacity(members.len());
    for m in &members {
        refs.push(m.get().created(py, None)?);
    }
    let name = name.to_string();
    py.detach(|| {
        wait(&runtime, async move {
            let borrowed: Vec<&ember::ActorRef> = refs.iter().collect();
            cluster.form_group(&name, &borrowed).await
        })
    })
    .map_err(error)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(allreduce, m)?)?;
    m.add_function(wrap_pyfunction!(reduce_scatter, m)?)?;
    m.add_function(wrap_pyfunction!(allgather, m)?)?;
    m.add_function(wrap_pyfunction!(broadcast, m)?)?;
    m.add_function(wrap_pyfunction!(barrier, m)?)?;
    m.add_function(wrap_pyfunction!(rank_and_size, m)?)?;
    m.add_function(wrap_pyfunction!(join_group, m)?)?;
    m.add_function(wrap_pyfunction!(form_group, m)?)?;
    Ok(())
}
