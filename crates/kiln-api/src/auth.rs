//! The bearer token that alias moves present. Tokens are compared as BLAKE3 digests, whose
//! equality is constant-time: neither the content nor the length of the expected token leaks
//! through the time a refusal takes.

use axum::http::{HeaderMap, header};
use kiln_serve::api_error::{ApiError, ErrorCode};

use crate::KILN_REGISTRY_TOKEN;

/// The token a mutating request must present, kept only as its digest.
#[derive(Debug)]
pub struct Token(Option<blake3::Hash>);

impl Token {
    pub fn new(token: Option<&str>) -> Token {
        Token(token.map(|token| blake3::hash(token.as_bytes())))
    }

    /// Lets the request through when it presents the token: 401 when it presents none, 403
    /// when it presents another, and 403 for every request when no token is configured.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.0 else {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "this registry API moves no alias: it was started without a token; set `{KILN_REGISTRY_TOKEN}` to a secret where it runs, and send it as `Authorization: Bearer <token>`"
                ),
            ));
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let Some(presented) = presented else {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "moving an alias takes a token: send `Authorization: Bearer <token>` with the registry's token",
            ));
        };
        // `blake3::Hash`'s equality is constant-time.
        if blake3::hash(presented.as_bytes()) != *expected {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "the token does not match the registry's token",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn only_the_configured_token_passes() {
        let token = Token::new(Some("s3cret"));
        assert!(token.check(&headers(Some("Bearer s3cret"))).is_ok());
        assert!(token.check(&headers(Some("bearer  s3cret "))).is_ok());
        let code = |value| token.check(&headers(value)).unwrap_err().code;
        assert_eq!(code(None), ErrorCode::Unauthorized);
        assert_eq!(code(Some("Basic czNjcmV0")), ErrorCode::Unauthorized);
        assert_eq!(code(Some("s3cret")), ErrorCode::Unauthorized);
        assert_eq!(code(Some("Bearer s3cre")), ErrorCode::Forbidden);
        assert_eq!(code(Some("Bearer s3cret2")), ErrorCode::Forbidden);
        let none = Token::new(None);
        let refused = none.check(&headers(Some("Bearer s3cret"))).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Forbidden);
        assert!(refused.message.contains(KILN_REGISTRY_TOKEN));
    }
}
