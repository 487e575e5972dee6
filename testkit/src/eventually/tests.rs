use std::time::Duration;

use super::{eventually, eventually_async, eventually_every};

#[test]
fn eventually_returns_the_first_some() {
    let mut tries = 0;
    let v = eventually_every(
        "the third try",
        Duration::from_secs(5),
        Duration::ZERO,
        || {
            tries += 1;
            (tries == 3).then_some(tries)
        },
    );
    assert_eq!(v, 3);
}

#[test]
#[should_panic(expected = "timed out waiting for nothing")]
fn eventually_panics_with_what_it_waited_for() {
    eventually("nothing", Duration::from_millis(10), || None::<()>);
}

#[tokio::test]
async fn eventually_async_returns_the_first_ok() {
    let mut tries = 0;
    let v = eventually_async(
        "the second try",
        Duration::from_secs(5),
        Duration::ZERO,
        async || {
            tries += 1;
            anyhow::ensure!(tries == 2, "try {tries}");
            Ok(tries)
        },
    )
    .await;
    assert_eq!(v, 2);
}

#[tokio::test]
#[should_panic(expected = "last error: always")]
async fn eventually_async_panics_with_the_last_error() {
    eventually_async(
        "never",
        Duration::from_millis(10),
        Duration::ZERO,
        async || Err::<(), _>(anyhow::anyhow!("always")),
    )
    .await;
}
