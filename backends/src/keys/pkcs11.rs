//! A CA key in a PKCS#11 token (an HSM, a cloud HSM's PKCS#11 library,
//! SoftHSM2).
//!
//! signet loads the token's module, finds the token by label (or slot),
//! logs in as the user with a PIN read from a file or the environment at
//! each login, and finds the private key by label and/or ID. The public key
//! is read from the token's public key object with the same label/ID. Each
//! signature is `CKM_ECDSA` over a digest signet computes (SHA-256 for
//! P-256, SHA-384 for P-384) or `CKM_RSA_PKCS` over the SHA-256
//! `DigestInfo`, both mechanisms every token offers. Calls into the module
//! block, so they run on tokio's blocking pool, on one of `sessions`
//! sessions. A session the token drops (removed device, closed session,
//! lost login) is discarded and the next signature logs in and finds the
//! key again; a token that is gone is looked for again after finalizing
//! and initializing the module (at most once a second), so a token that
//! comes back is used again without a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use serde::Deserialize;
use signet_core::crypto::KeyKind;
use signet_core::key::{
    KeyDescription, KeyHandle, KeyStoreError, PublicKey, SignatureAlgorithm, ecdsa_signature_to_der,
};

use super::KeyOpenError;

fn default_sessions() -> usize {
    4
}

/// `key: { type: pkcs11, ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11KeyConfig {
    /// The token's PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token by label...
    #[serde(default)]
    pub token_label: Option<String>,
    /// ...or by slot ID.
    #[serde(default)]
    pub slot: Option<u64>,
    /// The user PIN: a file (trailing whitespace ignored)...
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// ...or an environment variable.
    #[serde(default)]
    pub pin_env: Option<String>,
    /// The key by `CKA_LABEL`...
    #[serde(default)]
    pub key_label: Option<String>,
    /// ...and/or by `CKA_ID`, in hex.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Sessions signing at once (signatures beyond wait for one).
    #[serde(default = "default_sessions")]
    pub sessions: usize,
}

impl Pkcs11KeyConfig {
    fn check(&self) -> Result<(), String> {
        if self.token_label.is_some() == self.slot.is_some() {
            return Err("exactly one of token_label and slot".into());
        }
        if self.pin_file.is_some() == self.pin_env.is_some() {
            return Err("exactly one of pin_file and pin_env".into());
        }
        if self.key_label.is_none() && self.key_id.is_none() {
            return Err("key_label or key_id (or both)".into());
        }
        if let Some(id) = &self.key_id
            && hex::decode(id).is_err()
        {
            return Err(format!("key_id {id:?} is not hex"));
        }
        if !(1..=256).contains(&self.sessions) {
            return Err("sessions must be between 1 and 256".into());
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let token = match (&self.token_label, self.slot) {
            (Some(l), _) => format!("token {l:?}"),
            (None, Some(s)) => format!("slot {s}"),
            (None, None) => String::new(),
        };
        format!("{token} {}", self.describe_key())
    }

    fn describe_key(&self) -> String {
        match (&self.key_label, &self.key_id) {
            (Some(l), Some(i)) => format!("key {l:?} id {i}"),
            (Some(l), None) => format!("key {l:?}"),
            (None, Some(i)) => format!("key id {i}"),
            (None, None) => String::new(),
        }
    }

    /// The PIN, and its digest (to recognise one the token refused).
    fn pin(&self) -> Result<(AuthPin, [u8; 32]), String> {
        let pin = match (&self.pin_file, &self.pin_env) {
            (Some(f), _) => zeroize::Zeroizing::new(
                std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?,
            ),
            (None, Some(v)) => {
                zeroize::Zeroizing::new(std::env::var(v).map_err(|_| format!("{v} is not set"))?)
            }
            (None, None) => return Err("no PIN source".into()),
        };
        let pin = pin.trim_end();
        Ok((
            AuthPin::new(pin.into()),
            signet_core::crypto::sha256(pin.as_bytes()),
        ))
    }

    /// Attributes that select the key's objects of `class`.
    fn template(&self, class: ObjectClass) -> Vec<Attribute> {
        let mut t = vec![Attribute::Class(class)];
        if let Some(l) = &self.key_label {
            t.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(i) = &self.key_id {
            t.push(Attribute::Id(hex::decode(i).unwrap_or_default()));
        }
        t
    }
}

/// Sessions not in use, and what the last login found.
#[derive(Default)]
struct Pool {
    idle: Vec<Session>,
    /// `None` until found, and after the token dropped a session.
    key: Option<ObjectHandle>,
}

struct Token {
    config: Pkcs11KeyConfig,
    ctx: Pkcs11,
    /// Held (read) by every use of the module; written only to finalize
    /// and initialize it again, which must not overlap any call and leaves
    /// no session of the old initialization behind.
    module: RwLock<()>,
    slot: Mutex<Option<Slot>>,
    pool: Mutex<Pool>,
    /// When the module was last finalized and initialized again (at most
    /// once a second).
    reinitialized: Mutex<Option<tokio::time::Instant>>,
    /// The digest of a PIN the token refused: not tried again until the
    /// PIN source holds another (each wrong try counts towards the token
    /// locking the PIN).
    refused_pin: Mutex<Option<[u8; 32]>>,
}

/// A key in a PKCS#11 token.
pub struct Pkcs11Key {
    token: Arc<Token>,
    public: PublicKey,
    /// One per session; held by the blocking task that signs, so a caller
    /// that stops waiting does not free it while the token still works.
    permits: Arc<tokio::sync::Semaphore>,
    id: String,
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("module", &self.token.config.module)
            .field("key", &self.id)
            .finish_non_exhaustive()
    }
}

fn store_err(detail: impl Into<String>) -> KeyOpenError {
    KeyOpenError::Store {
        store: "pkcs11",
        detail: detail.into(),
    }
}

/// Whether a failure means the session or login is gone (worth a new
/// session and a retry) rather than a refusal.
fn transient(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::SessionClosed
                | RvError::SessionHandleInvalid
                | RvError::SessionCount
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::UserNotLoggedIn
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid
                | RvError::FunctionFailed
                | RvError::HostMemory
                | RvError::CryptokiNotInitialized,
            _
        )
    )
}

fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("{function:?}: {rv:?}"),
        other => other.to_string(),
    }
}

impl Token {
    fn find_slot(&self) -> Result<Slot, String> {
        if let Some(slot) = *self.slot.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(slot);
        }
        self.lookup_slot()
    }

    /// Finalizes and initializes the module again, waiting for every call
    /// in progress and closing the sessions first (modules list their
    /// tokens when initialized: one that went away and came back is seen
    /// only after this). At most once a second.
    fn reinitialize(&self) {
        {
            let mut last = self.reinitialized.lock().unwrap_or_else(|e| e.into_inner());
            if last
                .is_some_and(|t| signet_core::clock::elapsed(t) < std::time::Duration::from_secs(1))
            {
                return;
            }
            *last = Some(signet_core::clock::monotonic());
        }
        let _exclusive = self.module.write().unwrap_or_else(|e| e.into_inner());
        {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.idle.clear();
            pool.key = None;
        }
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(e) = self.ctx.clone().finalize() {
            tracing::debug!(error = %describe(&e), "C_Finalize");
        }
        match self
            .ctx
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => {
                tracing::warn!(error = %describe(&e), "PKCS#11 module: C_Initialize failed")
            }
        }
    }

    fn lookup_slot(&self) -> Result<Slot, String> {
        let slots = self
            .ctx
            .get_slots_with_token()
            .map_err(|e| format!("listing slots: {}", describe(&e)))?;
        let slot = match (&self.config.token_label, self.config.slot) {
            (Some(label), _) => slots
                .into_iter()
                .find(|s| {
                    self.ctx
                        .get_token_info(*s)
                        .is_ok_and(|t| t.label().trim_end() == label)
                })
                .ok_or_else(|| format!("no token labelled {label:?}"))?,
            (None, Some(id)) => slots
                .into_iter()
                .find(|s| s.id() == id)
                .ok_or_else(|| format!("no token in slot {id}"))?,
            (None, None) => return Err("no token selected".into()),
        };
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(slot);
        Ok(slot)
    }

    /// An idle session, or a new one (logged in, the key found).
    fn session(&self) -> Result<(Session, ObjectHandle), CkOrConfig> {
        {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(key) = pool.key
                && let Some(session) = pool.idle.pop()
            {
                return Ok((session, key));
            }
        }
        let slot = self.find_slot().map_err(CkOrConfig::Config)?;
        let session = self.ctx.open_ro_session(slot).map_err(CkOrConfig::Ck)?;
        let (pin, pin_digest) = self.config.pin().map_err(CkOrConfig::Config)?;
        let mut refused = self.refused_pin.lock().unwrap_or_else(|e| e.into_inner());
        if *refused == Some(pin_digest) {
            return Err(CkOrConfig::Config(
                "the token refused this PIN; not trying it again until the PIN source changes"
                    .into(),
            ));
        }
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => *refused = None,
            Err(
                e @ CkError::Pkcs11(
                    RvError::PinIncorrect
                    | RvError::PinInvalid
                    | RvError::PinLenRange
                    | RvError::PinExpired
                    | RvError::PinLocked,
                    _,
                ),
            ) => {
                *refused = Some(pin_digest);
                tracing::error!(error = %describe(&e), "the PKCS#11 token refused the PIN; not trying it again until it changes");
                return Err(CkOrConfig::Ck(e));
            }
            Err(e) => return Err(CkOrConfig::Ck(e)),
        }
        drop(refused);
        let key = self.find_key(&session)?;
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).key = Some(key);
        Ok((session, key))
    }

    fn find_key(&self, session: &Session) -> Result<ObjectHandle, CkOrConfig> {
        let found = session
            .find_objects(&self.config.template(ObjectClass::PRIVATE_KEY))
            .map_err(CkOrConfig::Ck)?;
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(CkOrConfig::Config(format!(
                "no private {} in the token",
                self.config.describe_key()
            ))),
            _ => Err(CkOrConfig::Config(
                "more than one private key matches; name it by key_id too".into(),
            )),
        }
    }

    /// The public key, from the token's public key object.
    fn public_key(&self) -> Result<PublicKey, CkOrConfig> {
        let (session, private) = self.session()?;
        let types = [AttributeType::KeyType];
        let key_type = session
            .get_attributes(private, &types)
            .map_err(CkOrConfig::Ck)?
            .into_iter()
            .find_map(|a| match a {
                Attribute::KeyType(t) => Some(t),
                _ => None,
            })
            .ok_or_else(|| CkOrConfig::Config("the key has no CKA_KEY_TYPE".into()))?;
        let public = session
            .find_objects(&self.config.template(ObjectClass::PUBLIC_KEY))
            .map_err(CkOrConfig::Ck)?;
        let public = match public.as_slice() {
            [one] => *one,
            [] => {
                return Err(CkOrConfig::Config(
                    "the token has no public key object with the private key's label/ID".into(),
                ));
            }
            _ => {
                return Err(CkOrConfig::Config(
                    "more than one public key object matches; name the key by key_id too".into(),
                ));
            }
        };
        let read = |types: &[AttributeType]| {
            session
                .get_attributes(public, types)
                .map_err(CkOrConfig::Ck)
        };
        let key = if key_type == KeyType::EC {
            let attrs = read(&[AttributeType::EcParams, AttributeType::EcPoint])?;
            let (mut params, mut point) = (None, None);
            for a in attrs {
                match a {
                    Attribute::EcParams(p) => params = Some(p),
                    Attribute::EcPoint(p) => point = Some(p),
                    _ => {}
                }
            }
            match (params, point) {
                (Some(params), Some(point)) => PublicKey::from_ec(&params, &point),
                _ => return Err(CkOrConfig::Config("the EC public key is incomplete".into())),
            }
        } else if key_type == KeyType::RSA {
            let attrs = read(&[AttributeType::Modulus, AttributeType::PublicExponent])?;
            let (mut n, mut e) = (None, None);
            for a in attrs {
                match a {
                    Attribute::Modulus(v) => n = Some(v),
                    Attribute::PublicExponent(v) => e = Some(v),
                    _ => {}
                }
            }
            match (n, e) {
                (Some(n), Some(e)) => PublicKey::from_rsa(&n, &e),
                _ => {
                    return Err(CkOrConfig::Config(
                        "the RSA public key is incomplete".into(),
                    ));
                }
            }
        } else {
            return Err(CkOrConfig::Config(format!(
                "key type {key_type} is not supported (use EC P-256/P-384 or RSA)"
            )));
        }
        .map_err(|e| CkOrConfig::Config(e.to_string()))?;
        self.give_back(session);
        Ok(key)
    }

    fn give_back(&self, session: Session) {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .idle
            .push(session);
    }

    /// After a failure that may mean the token went away: sessions and the
    /// key handle are dropped, the slot is looked up again.
    fn reset(&self) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.idle.clear();
        pool.key = None;
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn sign(&self, mechanism: &Mechanism<'_>, data: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let result = {
            let _shared = self.module.read().unwrap_or_else(|e| e.into_inner());
            self.sign_with_session(mechanism, data)
        };
        if let Err(CkOrConfig::Config(m)) = &result
            && m.starts_with("no token")
        {
            // Looked for again after the module is initialized anew.
            self.reinitialize();
        }
        result.map_err(|e| self.classify(e))
    }

    fn sign_with_session(
        &self,
        mechanism: &Mechanism<'_>,
        data: &[u8],
    ) -> Result<Vec<u8>, CkOrConfig> {
        let (session, key) = self.session()?;
        match session.sign(mechanism, key, data) {
            Ok(sig) => {
                self.give_back(session);
                Ok(sig)
            }
            Err(e) => Err(CkOrConfig::Ck(e)),
        }
    }

    fn classify(&self, e: CkOrConfig) -> KeyStoreError {
        match e {
            CkOrConfig::Ck(e) if transient(&e) => {
                self.reset();
                KeyStoreError::Unavailable(format!("PKCS#11 {}", describe(&e)))
            }
            CkOrConfig::Ck(e) => KeyStoreError::Refused(format!("PKCS#11 {}", describe(&e))),
            // A token that is not (yet) there is the same as a removed one.
            CkOrConfig::Config(m) if m.starts_with("no token") => {
                self.reset();
                KeyStoreError::Unavailable(m)
            }
            CkOrConfig::Config(m) => KeyStoreError::Refused(m),
        }
    }
}

enum CkOrConfig {
    Ck(CkError),
    Config(String),
}

impl CkOrConfig {
    fn into_open_error(self) -> KeyOpenError {
        match self {
            CkOrConfig::Ck(e) => store_err(describe(&e)),
            CkOrConfig::Config(m) => store_err(m),
        }
    }
}

impl Pkcs11Key {
    /// Loads the module, logs in and reads the key's public half.
    pub async fn open(config: Pkcs11KeyConfig) -> Result<Arc<Self>, KeyOpenError> {
        config.check().map_err(store_err)?;
        let id = config.describe();
        let sessions = config.sessions;
        let token = tokio::task::spawn_blocking(move || -> Result<Token, KeyOpenError> {
            let ctx = Pkcs11::new(&config.module)
                .map_err(|e| store_err(format!("{}: {e}", config.module.display())))?;
            match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
                Err(e) => return Err(store_err(format!("C_Initialize: {}", describe(&e)))),
            }
            Ok(Token {
                config,
                ctx,
                module: RwLock::new(()),
                slot: Mutex::new(None),
                pool: Mutex::new(Pool::default()),
                reinitialized: Mutex::new(None),
                refused_pin: Mutex::new(None),
            })
        })
        .await
        .map_err(|e| store_err(e.to_string()))??;
        let token = Arc::new(token);
        let t = token.clone();
        let public = tokio::task::spawn_blocking(move || {
            let _shared = t.module.read().unwrap_or_else(|e| e.into_inner());
            t.public_key()
        })
        .await
        .map_err(|e| store_err(e.to_string()))?
        .map_err(CkOrConfig::into_open_error)?;
        if matches!(public.kind(), KeyKind::Ed25519) {
            return Err(store_err(
                "Ed25519 keys are not supported in PKCS#11 tokens",
            ));
        }
        tracing::info!(key = %id, algorithm = %public.kind(), "PKCS#11 key opened");
        Ok(Arc::new(Self {
            token,
            public,
            permits: Arc::new(tokio::sync::Semaphore::new(sessions)),
            id,
        }))
    }
}

#[async_trait]
impl KeyHandle for Pkcs11Key {
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.public.algorithm()
    }
    fn public_key(&self) -> &[u8] {
        self.public.bits()
    }
    fn describe(&self) -> KeyDescription {
        KeyDescription {
            store: "pkcs11",
            id: self.id.clone(),
        }
    }
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let digest = self.public.digest(message)?;
        let ec = matches!(self.public.kind(), KeyKind::EcdsaP256 | KeyKind::EcdsaP384);
        let data = if ec {
            digest.bytes
        } else {
            digest.digest_info()
        };
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| KeyStoreError::Unavailable("closing".into()))?;
        let token = self.token.clone();
        let signature = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mechanism = if ec {
                Mechanism::Ecdsa
            } else {
                Mechanism::RsaPkcs
            };
            token.sign(&mechanism, &data)
        })
        .await
        .map_err(|e| KeyStoreError::Unavailable(e.to_string()))??;
        if ec {
            ecdsa_signature_to_der(&signature)
        } else {
            Ok(signature)
        }
    }
}
