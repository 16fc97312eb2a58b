//! Load drivers. Closed loop: N workers, each sending its next request when the last one
//! answered — finds the highest throughput. Open loop: requests start on a fixed schedule
//! whatever the answers do, and latency counts from the scheduled start, so a slow
//! server cannot hide its queueing (no coordinated omission).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// What a load run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs … 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn measured(h: &Histogram<u64>, errors: u64, elapsed: Duration) -> Measured {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let seconds = elapsed.as_secs_f64();
    Measured {
        requests: h.len(),
        errors,
        seconds,
        throughput: h.len() as f64 / seconds,
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1000.0,
    }
}

/// Runs `call` from `workers` loops for `duration` (after `warmup`, not measured).
/// `call(worker, i)` returns whether the request succeeded.
pub async fn closed_loop<F, Fut>(
    workers: usize,
    warmup: Duration,
    duration: Duration,
    call: F,
) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let measure_from = started + warmup;
    let end = measure_from + duration;
    let total = Arc::new(Mutex::new((histogram(), 0u64)));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let call = call.clone();
            let total = total.clone();
            tokio::spawn(async move {
                let (mut h, mut errors) = (histogram(), 0u64);
                let mut i = 0u64;
                loop {
                    let begin = Instant::now();
                    if begin >= end {
                        break;
                    }
                    let ok = call(w, i).await;
                    i += 1;
                    if begin >= measure_from {
                        let _ = h.record(begin.elapsed().as_micros().max(1) as u64);
                        errors += u64::from(!ok);
                    }
                }
                let mut total = total.lock().await;
                total.0.add(&h).expect("same bounds");
                total.1 += errors;
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a load worker panicked");
    }
    let total = total.lock().await;
    measured(&total.0, total.1, duration)
}

/// Starts `rate` requests per second for `duration` (after `warmup`), at most
/// `max_in_flight` at once; latency is measured from each request's scheduled start.
pub async fn open_loop<F, Fut>(
    rate: f64,
    max_in_flight: usize,
    warmup: Duration,
    duration: Duration,
    call: F,
) -> Measured
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let call = Arc::new(call);
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let started = Instant::now();
    let measure_from = started + warmup;
    let end = measure_from + duration;
    let total = Arc::new(std::sync::Mutex::new((histogram(), 0u64)));
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0u64;
    loop {
        let scheduled = started + interval.mul_f64(i as f64);
        if scheduled >= end {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore stays open");
        let call = call.clone();
        let total = total.clone();
        tasks.spawn(async move {
            let ok = call(i).await;
            if scheduled >= measure_from {
                let mut total = total.lock().expect("no panics while recording");
                let _ = total
                    .0
                    .record(scheduled.elapsed().as_micros().max(1) as u64);
                total.1 += u64::from(!ok);
            }
            drop(permit);
        });
        i += 1;
    }
    while tasks.join_next().await.is_some() {}
    let total = total.lock().expect("no panics while recording");
    measured(&total.0, total.1, duration)
}
