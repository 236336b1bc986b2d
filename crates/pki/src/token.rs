//! Short-lived session tokens.
//!
//! The hub gives each connected device a signed token (a JWT, RFC 7519, signed with Ed25519,
//! RFC 8037) valid for at most an hour and bound to the device id and to the SHA-256 of the
//! certificate it connected with (`cnf.x5t#S256`, RFC 8705). The hub's HTTPS endpoints for
//! devices accept a request only with a valid token *and* the same client certificate on the
//! TLS connection, so a stolen token is useless without the device's key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::PkiError;

/// Longest lifetime a token may have.
pub const MAX_LIFETIME_SECS: u64 = 3600;
/// Audience of tokens for the device API.
pub const AUDIENCE: &str = "rampart-device-api";

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    pub iss: String,
    /// The device id.
    pub sub: String,
    pub aud: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
    /// Unique token id.
    pub jti: String,
    /// Confirmation: the certificate the token is bound to.
    pub cnf: Confirmation,
}

/// RFC 8705 certificate-bound confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// The RFC 8705 thumbprint of a DER certificate: base64url(SHA-256(der)).
pub fn certificate_thumbprint(cert_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(cert_der))
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token signature does not verify (forged, or signed by another hub)")]
    BadSignature,
    #[error("token expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
    #[error("token not valid yet (issued at {iat}, now {now})")]
    NotYetValid { iat: u64, now: u64 },
    #[error("token lifetime {0} s exceeds the maximum of 3600 s")]
    TooLong(u64),
    #[error("token audience {0:?} is not {AUDIENCE:?}")]
    WrongAudience(String),
    #[error("token is for {token:?}, not for {presented:?}")]
    WrongSubject { token: String, presented: String },
    #[error("token is bound to another certificate than the one presented")]
    WrongCertificate,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// The hub's token signing key (Ed25519).
pub struct TokenKey {
    pair: Ed25519KeyPair,
    kid: String,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    /// Creates a key; returns it with its PKCS#8 encoding (to be stored 0600).
    pub fn generate() -> Result<(TokenKey, Vec<u8>), PkiError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| PkiError::Validity("system random number generator failed"))?;
        let key = Self::from_pkcs8(doc.as_ref())?;
        Ok((key, doc.as_ref().to_vec()))
    }

    /// Loads a key from PKCS#8.
    pub fn from_pkcs8(der: &[u8]) -> Result<TokenKey, PkiError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| PkiError::Validity("token key is not an Ed25519 PKCS#8 key"))?;
        let kid = hex::encode(&Sha256::digest(pair.public_key().as_ref())[..8]);
        Ok(TokenKey { pair, kid })
    }

    /// Key id (first 8 bytes of the SHA-256 of the public key, hex).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Issues a token for `device_id` bound to `cert_der`, valid `lifetime_secs` from `now`.
    pub fn issue(
        &self,
        device_id: &str,
        cert_der: &[u8],
        now: u64,
        lifetime_secs: u64,
    ) -> Result<(String, TokenClaims), PkiError> {
        self.issue_for_digest(device_id, &Sha256::digest(cert_der), now, lifetime_secs)
    }

    /// Like [`TokenKey::issue`], from the certificate's SHA-256 (its registry fingerprint).
    pub fn issue_for_digest(
        &self,
        device_id: &str,
        cert_sha256: &[u8],
        now: u64,
        lifetime_secs: u64,
    ) -> Result<(String, TokenClaims), PkiError> {
        if lifetime_secs == 0 || lifetime_secs > MAX_LIFETIME_SECS {
            return Err(PkiError::Validity(
                "token lifetime must be 1 to 3600 seconds",
            ));
        }
        let claims = TokenClaims {
            iss: "rampart".into(),
            sub: device_id.to_owned(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + lifetime_secs,
            jti: crate::random_hex(16)?,
            cnf: Confirmation {
                x5t_s256: URL_SAFE_NO_PAD.encode(cert_sha256),
            },
        };
        Ok((self.sign(&claims)?, claims))
    }

    /// Signs arbitrary claims (tests use it to build forged and expired tokens).
    pub fn sign(&self, claims: &TokenClaims) -> Result<String, PkiError> {
        let header = Header {
            alg: "EdDSA".into(),
            typ: "JWT".into(),
            kid: self.kid.clone(),
        };
        let enc = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let h = serde_json::to_vec(&header).map_err(|_| PkiError::Validity("token header"))?;
        let c = serde_json::to_vec(claims).map_err(|_| PkiError::Validity("token claims"))?;
        let signing_input = format!("{}.{}", enc(&h), enc(&c));
        let sig = self.pair.sign(signing_input.as_bytes());
        Ok(format!("{signing_input}.{}", enc(sig.as_ref())))
    }

    /// Verifies a token presented over a TLS connection authenticated with `cert_der` as
    /// `device_id`, at time `now`.
    pub fn verify(
        &self,
        token: &str,
        device_id: &str,
        cert_der: &[u8],
        now: u64,
    ) -> Result<TokenClaims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        let dec = |p: &str| {
            URL_SAFE_NO_PAD
                .decode(p)
                .map_err(|_| TokenError::Malformed("not base64url"))
        };
        let header: Header = serde_json::from_slice(&dec(h)?)
            .map_err(|_| TokenError::Malformed("header is not JSON"))?;
        if header.alg != "EdDSA" {
            // Never let the token choose its own algorithm ("alg":"none" and friends).
            return Err(TokenError::Malformed("algorithm must be EdDSA"));
        }
        let signature = dec(s)?;
        UnparsedPublicKey::new(&ED25519, self.pair.public_key().as_ref())
            .verify(format!("{h}.{c}").as_bytes(), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: TokenClaims = serde_json::from_slice(&dec(c)?)
            .map_err(|_| TokenError::Malformed("claims are not JSON"))?;
        if claims.aud != AUDIENCE {
            return Err(TokenError::WrongAudience(claims.aud));
        }
        if claims.exp.saturating_sub(claims.iat) > MAX_LIFETIME_SECS {
            return Err(TokenError::TooLong(claims.exp.saturating_sub(claims.iat)));
        }
        if now >= claims.exp {
            return Err(TokenError::Expired {
                exp: claims.exp,
                now,
            });
        }
        // Allow a minute of clock skew between hub nodes.
        if claims.iat > now + 60 {
            return Err(TokenError::NotYetValid {
                iat: claims.iat,
                now,
            });
        }
        if claims.sub != device_id {
            return Err(TokenError::WrongSubject {
                token: claims.sub,
                presented: device_id.to_owned(),
            });
        }
        if claims.cnf.x5t_s256 != certificate_thumbprint(cert_der) {
            return Err(TokenError::WrongCertificate);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn issued_tokens_verify_and_bad_ones_do_not() {
        let (key, pkcs8) = TokenKey::generate().unwrap();
        let reloaded = TokenKey::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(reloaded.kid(), key.kid());
        let (token, claims) = key.issue("gw-1", b"cert-a", NOW, 600).unwrap();
        assert_eq!(
            reloaded
                .verify(&token, "gw-1", b"cert-a", NOW + 10)
                .unwrap(),
            claims
        );

        assert!(matches!(
            key.verify(&token, "gw-1", b"cert-a", NOW + 600),
            Err(TokenError::Expired { .. })
        ));
        assert!(matches!(
            key.verify(&token, "gw-2", b"cert-a", NOW),
            Err(TokenError::WrongSubject { .. })
        ));
        assert_eq!(
            key.verify(&token, "gw-1", b"cert-b", NOW),
            Err(TokenError::WrongCertificate)
        );

        // Forged: signed by another key, or payload altered.
        let (other, _) = TokenKey::generate().unwrap();
        let (forged, _) = other.issue("gw-1", b"cert-a", NOW, 600).unwrap();
        assert_eq!(
            key.verify(&forged, "gw-1", b"cert-a", NOW),
            Err(TokenError::BadSignature)
        );
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut c = claims.clone();
        c.sub = "gw-evil".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        assert_eq!(
            key.verify(&parts.join("."), "gw-evil", b"cert-a", NOW),
            Err(TokenError::BadSignature)
        );
        // alg=none is refused before anything else.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"x"}"#),
            parts[1]
        );
        assert!(matches!(
            key.verify(&none, "gw-evil", b"cert-a", NOW),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            key.verify("abc", "gw-1", b"cert-a", NOW),
            Err(TokenError::Malformed(_))
        ));
        // Lifetimes over an hour are refused at issue and at verification.
        assert!(key.issue("gw-1", b"c", NOW, 3601).is_err());
        let mut long = claims;
        long.exp = long.iat + 7200;
        let t = key.sign(&long).unwrap();
        assert_eq!(
            key.verify(&t, "gw-1", b"cert-a", NOW),
            Err(TokenError::TooLong(7200))
        );
    }
}
