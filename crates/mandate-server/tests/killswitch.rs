//! The kill switch: `revoke --everything` refuses every mandate and
//! credential issued until then, in every tenant, at once and after a restart.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use mandate_core::jose::Alg;
use serde_json::json;

#[test]
fn everything_issued_before_is_refused_in_every_tenant_and_new_runs_work() {
    let b = Broker::start("kill-all");
    let g1 = b.seed("acme");
    let g2 = b.seed("globex");
    let (_, m1, k1) = b.start_run("acme", &g1, Alg::EdDSA);
    let (_, m2, k2) = b.start_run("globex", &g2, Alg::ES256);
    let (s, c1) = b.exchange(&m1, &k1, "crm", "read");
    assert_eq!(s, 200, "{c1}");
    let cred = c1["access_token"].as_str().unwrap().to_owned();
    assert_eq!(introspect(&b, &cred)["active"], true);

    assert_refused(
        &b.admin_post("/v1/revocations", json!({"kind": "everything!"})),
        400,
        "invalid_request",
        "everything",
    );
    let (s, v) = b.admin_post(
        "/v1/revocations",
        json!({"kind": "everything", "reason": "incident 7"}),
    );
    assert_eq!(s, 200, "{v}");
    assert!(v["revoked"].as_str().unwrap().starts_with("everything:"));
    for (m, k) in [(&m1, &k1), (&m2, &k2)] {
        assert_refused(
            &b.exchange(m, k, "crm", "read"),
            400,
            "invalid_grant",
            "revoked (everything)",
        );
    }
    assert_eq!(introspect(&b, &cred)["active"], false);
    let feed = b.admin_get("/v1/revocations/log?after=0").1;
    assert!(
        feed["revocations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["key"] == v["revoked"])
    );

    // Runs started after the switch work (a second later: the cut is per second).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (_, m3, k3) = b.start_run("acme", &g1, Alg::EdDSA);
    assert_eq!(b.exchange(&m3, &k3, "crm", "read").0, 200);

    // And after a restart the switch still holds (the restarted broker has
    // another address, so the old mandates are checked in its registry).
    let cut = b.state.reg().revoked_before;
    assert!(cut > 0);
    let dir = b.dir.clone();
    drop(b);
    let b = Broker::start_again(&dir);
    let reg = b.state.reg();
    assert_eq!(reg.revoked_before, cut);
    assert!(reg.refused(&[], cut).unwrap().starts_with("everything:"));
    assert!(reg.refused(&[], cut + 1).is_none());
}
