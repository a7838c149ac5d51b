//! Bearer tokens and roles: who is calling, and which cooperative's data they may see.
//!
//! Tokens are 32 random bytes as 64 hex digits, shown once at creation; the database
//! keeps only their SHA-256. A `cooperative` token sees its own cooperative only, a
//! `regulator` token reads everything, an `admin` token can do everything.

use std::fmt;
use std::str::FromStr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use tokio_postgres::GenericClient;

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::domain::{CooperativeId, VehicleId};

/// The stored form of a token: its SHA-256 (RustCrypto's `sha2`) as 64 lower-case hex
/// digits, the same digest every earlier version stored, so existing tokens keep working.
/// The token itself is never compared in memory: the database looks up its digest, and
/// a digest's prefix tells an attacker nothing about a token that has it.
pub fn token_digest(token: &[u8]) -> String {
    hex::encode(Sha256::digest(token))
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// One cooperative's own vehicles, alerts and reports.
    Cooperative,
    /// Reads every cooperative's data.
    Regulator,
    /// Everything.
    Admin,
}

impl Role {
    /// Stable name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cooperative => "cooperative",
            Self::Regulator => "regulator",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cooperative" => Ok(Self::Cooperative),
            "regulator" => Ok(Self::Regulator),
            "admin" => Ok(Self::Admin),
            other => Err(format!(
                "unknown role {other:?}: expected cooperative, regulator or admin"
            )),
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its role.
    pub role: Role,
    /// For a cooperative token: the only cooperative it may see.
    pub cooperative: Option<String>,
    /// Free text given when the token was created.
    pub label: Option<String>,
    /// The token's stored digest ([`token_digest`]): what per-token limits count by.
    pub token_id: String,
}

impl Caller {
    /// Refuses (403) anyone but an admin.
    pub fn require_admin(&self) -> ApiResult<()> {
        match self.role {
            Role::Admin => Ok(()),
            _ => Err(ApiError::Forbidden("this needs an admin token".into())),
        }
    }

    /// The cooperative this caller is restricted to; `None` = every cooperative.
    pub fn scope(&self) -> Option<&str> {
        match self.role {
            Role::Cooperative => self.cooperative.as_deref(),
            Role::Regulator | Role::Admin => None,
        }
    }

    /// The cooperative filter to apply for an explicitly requested cooperative: a
    /// cooperative token asking for another one is refused (403).
    pub fn cooperative_filter(&self, requested: Option<&str>) -> ApiResult<Option<String>> {
        let requested = requested
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                CooperativeId::parse(s)
                    .map(|c| c.as_str().to_string())
                    .map_err(|e| ApiError::bad(format!("cooperative: {e}")))
            })
            .transpose()?;
        match (self.scope(), requested) {
            (Some(own), Some(r)) if r != own => Err(ApiError::Forbidden(format!(
                "this token may only read cooperative {own}"
            ))),
            (Some(own), _) => Ok(Some(own.to_string())),
            (None, r) => Ok(r),
        }
    }

    /// Checks that the caller may see `vehicle`, whose registered cooperative is
    /// `owner` (`None`: unknown vehicle → 404).
    pub fn check_vehicle(&self, vehicle: &str, owner: Option<&str>) -> ApiResult<()> {
        match (owner, self.scope()) {
            (None, _) => Err(ApiError::NotFound(format!("no vehicle {vehicle}"))),
            (Some(o), Some(own)) if o != own => Err(ApiError::Forbidden(format!(
                "vehicle {vehicle} belongs to another cooperative"
            ))),
            _ => Ok(()),
        }
    }
}

/// Parses a vehicle id from a path or query (400 when malformed).
pub fn vehicle_param(raw: &str) -> ApiResult<String> {
    vehicle_id_param(raw).map(|v| v.as_str().to_string())
}

/// [`vehicle_param`] as a [`VehicleId`].
pub fn vehicle_id_param(raw: &str) -> ApiResult<VehicleId> {
    VehicleId::parse(raw).map_err(|e| ApiError::bad(format!("vehicle: {e}")))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::Unauthorized("missing Authorization: Bearer <token> header".into())
            })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::Unauthorized("Authorization header must be \"Bearer <token>\"".into())
            })?;
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::Unauthorized("invalid token".into()));
        }
        let digest = token_digest(token.to_ascii_lowercase().as_bytes());
        let db = state.db.get().await?;
        let row = db
            .query_opt(
                "SELECT role, cooperative_id, label FROM api_tokens WHERE token_sha256 = $1",
                &[&digest],
            )
            .await?
            .ok_or_else(|| ApiError::Unauthorized("invalid token".into()))?;
        let role: String = row.get(0);
        Ok(Caller {
            role: role.parse().map_err(ApiError::Internal)?,
            cooperative: row.get(1),
            label: row.get(2),
            token_id: digest,
        })
    }
}

/// Errors creating a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A cooperative token needs its cooperative; other roles must not have one.
    #[error("{0}")]
    Invalid(String),
    /// The database refused.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// Creates a token, stores its SHA-256 and returns the token (the only time it is seen).
pub async fn create_token(
    db: &impl GenericClient,
    role: Role,
    cooperative: Option<&str>,
    label: Option<&str>,
) -> Result<String, TokenError> {
    let cooperative = match (role, cooperative) {
        (Role::Cooperative, Some(c)) => Some(
            CooperativeId::parse(c)
                .map_err(|e| TokenError::Invalid(e.to_string()))?
                .as_str()
                .to_string(),
        ),
        (Role::Cooperative, None) => {
            return Err(TokenError::Invalid(
                "a cooperative token needs --cooperative".into(),
            ))
        }
        (_, Some(_)) => {
            return Err(TokenError::Invalid(format!(
                "a {role} token is not bound to a cooperative; drop --cooperative"
            )))
        }
        (_, None) => None,
    };
    let token = hex::encode(rand::random::<[u8; 32]>());
    db.execute(
        "INSERT INTO api_tokens (token_sha256, role, cooperative_id, label) VALUES ($1, $2, $3, $4)",
        &[
            &token_digest(token.as_bytes()),
            &role.as_str(),
            &cooperative,
            &label,
        ],
    )
    .await?;
    Ok(token)
}

/// The role and label of `token` when it is a stored (not revoked) token.
pub async fn token_role(
    db: &impl GenericClient,
    token: &str,
) -> Result<Option<(Role, Option<String>)>, TokenError> {
    let digest = token_digest(token.to_ascii_lowercase().as_bytes());
    let row = db
        .query_opt(
            "SELECT role, label FROM api_tokens WHERE token_sha256 = $1",
            &[&digest],
        )
        .await?;
    Ok(row.and_then(|r| {
        let role: String = r.get(0);
        role.parse().ok().map(|role| (role, r.get(1)))
    }))
}

/// A stored token as `fleetwatch token list` shows it (never the token itself).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    /// First 12 hex digits of the token's SHA-256: what `revoke` takes.
    pub id: String,
    /// Its role.
    pub role: String,
    /// The cooperative of a cooperative token.
    pub cooperative: Option<String>,
    /// Free text given at creation.
    pub label: Option<String>,
    /// When it was created.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Every stored token, oldest first.
pub async fn list_tokens(db: &impl GenericClient) -> Result<Vec<TokenInfo>, TokenError> {
    let rows = db
        .query(
            "SELECT left(token_sha256, 12), role, cooperative_id, label, created_at
             FROM api_tokens ORDER BY created_at, token_sha256",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TokenInfo {
            id: r.get(0),
            role: r.get(1),
            cooperative: r.get(2),
            label: r.get(3),
            created_at: r.get(4),
        })
        .collect())
}

/// Revokes the one token whose SHA-256 starts with `id` (at least 8 hex digits, as
/// `list_tokens` shows them); refuses an unknown or ambiguous prefix.
pub async fn revoke_token(db: &impl GenericClient, id: &str) -> Result<TokenInfo, TokenError> {
    let id = id.to_ascii_lowercase();
    if id.len() < 8 || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TokenError::Invalid(
            "give the token's id: 8 to 64 hex digits, as `fleetwatch token list` shows".into(),
        ));
    }
    let rows = db
        .query(
            "SELECT token_sha256, left(token_sha256, 12), role, cooperative_id, label, created_at
             FROM api_tokens WHERE token_sha256 LIKE $1",
            &[&format!("{id}%")],
        )
        .await?;
    match rows.as_slice() {
        [r] => {
            db.execute(
                "DELETE FROM api_tokens WHERE token_sha256 = $1",
                &[&r.get::<_, &str>(0)],
            )
            .await?;
            Ok(TokenInfo {
                id: r.get(1),
                role: r.get(2),
                cooperative: r.get(3),
                label: r.get(4),
                created_at: r.get(5),
            })
        }
        [] => Err(TokenError::Invalid(format!("no token with id {id}"))),
        _ => Err(TokenError::Invalid(format!(
            "{} tokens start with {id}: give more digits",
            rows.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS 180-4 examples and NIST CAVP vectors: the digest is plain SHA-256.
    #[test]
    fn token_digest_is_sha256() {
        let cases: [(&[u8], &str); 4] = [
            (
                b"",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                b"abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            ),
            (
                &[b'a'; 1_000_000],
                "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
            ),
        ];
        for (msg, want) in cases {
            assert_eq!(token_digest(msg), want, "{} bytes", msg.len());
        }
    }

    /// A token created by an earlier version (hand-written SHA-256) keeps its stored
    /// digest, so it still authenticates.
    #[test]
    fn digest_of_a_token_created_before_is_unchanged() {
        assert_eq!(
            token_digest(b"1c8f75a0812c3fa8a9f2ad14db7a32b3091ce0afca6f42a5ba2575010e48ab6f"),
            "bc5f7ce9e59b6523bbdd70ea4a6a7ff207f32387a9081ba660d86e8d51e954a7"
        );
    }
}
