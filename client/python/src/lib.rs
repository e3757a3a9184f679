//! `ember._ember`, the extension module under the `ember` Python package: the Rust client,
//! the embedded local cluster and the worker roles, for Python. The package's Python code
//! (`client/python/python/ember/`) is the API users see; this module is what it stands on.
//!
//! - [`cluster`]: `init` (an embedded local cluster, or a running one through its cluster
//!   file) and `shutdown`, on one Tokio runtime per process, refused in a forked child.
//! - [`envelope`]: how values' bytes travel: a pickle, or a frame of it and its out-of-band
//!   buffers (numpy arrays' data), inline or in shared memory on one machine.
//! - [`gpu_actor`]: the built-in GPU actor, its buffers as numpy arrays.
//! - [`pending`]: a submitted task's result to wait for, with the GIL released and Ctrl-C
//!   answered while waiting.
//! - [`actor`]: Python actors' handles: created in the background, calls sent in order.
//! - [`call_args`]: a call's arguments (its deps' results and its pickle) made for each
//!   attempt's executor: large buffers through shared memory on this machine, inline elsewhere.
//! - [`collective`]: collective groups of Python actors over Ember's engine, on numpy data.
//! - [`executor`]: the task type `ember::python` and the actor type `ember::PythonActor`,
//!   which run pickled Python functions and classes in the executor processes of workers
//!   started from this package.
//!
//! Processes of the other roles (worker agents, executors) start as `python -m ember`
//! ([`ember_worker::role::set_program`]), which serves the role and exits.

mod actor;
mod call_args;
mod cluster;
mod collective;
mod envelope;
mod executor;
mod gpu_actor;
mod pending;

use std::ffi::OsString;

use pyo3::prelude::*;

pyo3::create_exception!(
    ember._ember,
    EmberError,
    pyo3::exceptions::PyException,
    "An error from Ember's runtime: its message says what failed and why."
);

/// Serves this process's role if it was started as a worker agent or an executor (and exits
/// when it ends); returns at once otherwise. `python -m ember` calls it first.
#[pyfunction]
fn serve_role(py: Python<'_>) {
    py.detach(ember_worker::role::serve_role_if_asked);
}

/// Runs the `ember` command line with `argv` (its first word is the program's name, shown
/// in usage messages as `ember`) and returns its exit status; the GIL is released meanwhile.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<OsString>) -> u8 {
    let mut args = argv;
    match args.first_mut() {
        Some(first) => *first = OsString::from("ember"),
        None => args.push(OsString::from("ember")),
    }
    py.detach(|| ember::cli::main(args))
}

/// Says that processes of the other roles start as `python -m ember` with this interpreter.
fn set_program(py: Python<'_>) -> PyResult<()> {
    let exe: String = py.import("sys")?.getattr("executable")?.extract()?;
    let program = ember_worker::role::Program {
        exe: exe.into(),
        args: vec![OsString::from("-m"), OsString::from("ember")],
    };
    // Already set (the module imported twice in one process): the first stands.
    let _ = ember_worker::role::set_program(program);
    Ok(())
}

#[pymodule]
fn _ember(m: &Bound<'_, PyModule>) -> PyResult<()> {
    cluster::watch_forks();
    set_program(m.py())?;
    m.add("EmberError", m.py().get_type::<EmberError>())?;
    m.add("PYTHON_TASK", executor::PYTHON_TASK)?;
    m.add_function(wrap_pyfunction!(serve_role, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(executor::task_context, m)?)?;
    cluster::register(m)?;
    actor::register(m)?;
    collective::register(m)?;
    gpu_actor::register(m)?;
    pending::register(m)?;
    envelope::register(m)?;
    Ok(())
}
