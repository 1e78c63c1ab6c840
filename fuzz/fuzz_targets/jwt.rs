//! Token verification (`auth::Verifier::verify`). The first byte picks the input's meaning:
//! even, the rest is a whole token (the JWT parser, header and signature checks); odd, the rest
//! is the claims JSON, signed here with the dev key so that the claims checks (`exp`, `nbf`,
//! `sub`, `tenant`, `aud`, caps) run on it. Never a panic; an accepted identity is well-formed.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edgerelay::auth::{Verifier, valid_sub, valid_tenant};
use edgerelay::config::AuthConfig;
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzzing-dev-secret";
const NOW: u64 = 1_800_000_000;

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    let cfg = AuthConfig { audience: Some("relay".into()), ..AuthConfig::default() };
    Verifier::new(&cfg, Some(SECRET)).expect("dev verifier")
});

/// An HS256 token with the dev kid over exactly `claims`.
fn sign(claims: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","kid":"dev","typ":"JWT"}"#);
    let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let tag = ring::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let token = if selector & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(token) => token.to_string(),
            Err(_) => return,
        }
    } else {
        sign(rest)
    };
    match VERIFIER.verify(&token, NOW) {
        Ok(identity) => {
            assert!(valid_sub(&identity.user), "accepted sub {:?}", identity.user);
            assert!(valid_tenant(&identity.tenant), "accepted tenant {:?}", identity.tenant);
        }
        Err(err) => {
            let _ = err.code();
        }
    }
});
