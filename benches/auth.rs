//! What a login costs: argon2id hashing and verification (the server's default parameters), and
//! REST access-token verification (paid by every authenticated request).

use std::time::Duration;

use convene::domain::access::AccessKeys;
use convene::domain::password;
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn argon2(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let hash = runtime
        .block_on(password::hash("correct horse battery".into()))
        .unwrap();
    let mut group = c.benchmark_group("argon2id");
    group.sample_size(20);
    group.bench_function("hash", |b| {
        b.iter(|| {
            runtime
                .block_on(password::hash(black_box("correct horse battery".into())))
                .unwrap()
        })
    });
    group.bench_function("verify", |b| {
        b.iter(|| {
            assert!(runtime.block_on(password::verify(
                black_box("correct horse battery".into()),
                hash.clone()
            )))
        })
    });
    group.finish();
}

fn access_token(c: &mut Criterion) {
    let keys = AccessKeys::new(b"bench", Duration::from_secs(900));
    let token = keys.issue("0190c0de-0000-7000-8000-000000000000", "alice");
    c.bench_function("access_token_verify", |b| {
        b.iter(|| black_box(keys.verify(black_box(&token)).unwrap()))
    });
}

criterion_group!(benches, argon2, access_token);
criterion_main!(benches);
