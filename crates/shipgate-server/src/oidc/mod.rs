//! Single sign-on through an OpenID Connect provider.

pub(crate) mod jwt;
