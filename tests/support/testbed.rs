//! `ember-testbed`: the worker executable of the integration tests. Started with
//! `EMBER_ROLE=worker EMBER_WORKER_CONFIG=<json>` it serves as a worker whose task and actor
//! types are those of `ember_tests::tasks`; started plainly it prints how to use it.

#[ember::main]
async fn main() {
    ember_tests::tasks::link();
    println!(
        "ember-testbed: the integration tests' worker executable; run it with \
         EMBER_ROLE=worker and EMBER_WORKER_CONFIG=<json WorkerConfig>"
    );
}
