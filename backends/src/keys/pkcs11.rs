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
//!
//! [`Pkcs11Keys`] makes keys in a token (a delegated authority's
//! intermediates): `C_GenerateKeyPair` of a token key pair labelled
//! `signet-<authority>-<time>-<random>`, the private half sensitive and not
//! extractable, destroyed (both halves) when retired or swept.
//!
//! A module is loaded once per process and serves one token: every key on
//! it shares its sessions, and finalizing it (which ends every session) is
//! done once for all of them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::SystemTime;

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
    GeneratedKey, KeyAlgorithm, KeyDescription, KeyFactory, KeyHandle, KeyStoreError, PublicKey,
    SignatureAlgorithm, ecdsa_signature_to_der, generated_key_time,
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
    /// As the key of a CA: the token, the PIN and the key.
    pub fn check(&self) -> Result<(), String> {
        self.check_token()?;
        if self.key_label.is_none() && self.key_id.is_none() {
            return Err("key_label or key_id (or both)".into());
        }
        Ok(())
    }

    /// As where intermediates' keys are made: the token and the PIN (signet
    /// names the keys it makes).
    pub fn check_for_generation(&self) -> Result<(), String> {
        self.check_token()?;
        if self.key_label.is_some() || self.key_id.is_some() {
            return Err("signet names the keys it makes: leave out key_label and key_id".into());
        }
        Ok(())
    }

    fn check_token(&self) -> Result<(), String> {
        if self.token_label.is_some() == self.slot.is_some() {
            return Err("exactly one of token_label and slot".into());
        }
        if self.pin_file.is_some() == self.pin_env.is_some() {
            return Err("exactly one of pin_file and pin_env".into());
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

    fn describe_token(&self) -> String {
        match (&self.token_label, self.slot) {
            (Some(l), _) => format!("token {l:?}"),
            (None, Some(s)) => format!("slot {s}"),
            (None, None) => String::new(),
        }
    }

    /// Whether `other` names the same token with the same PIN source (on
    /// the same module).
    fn same_token(&self, other: &Self) -> bool {
        self.token_label == other.token_label
            && self.slot == other.slot
            && self.pin_file == other.pin_file
            && self.pin_env == other.pin_env
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
}

/// Which objects are the key: by label and/or ID.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeySelector {
    label: Option<String>,
    id: Option<Vec<u8>>,
}

impl KeySelector {
    fn from_config(config: &Pkcs11KeyConfig) -> Self {
        Self {
            label: config.key_label.clone(),
            id: config
                .key_id
                .as_deref()
                .map(|i| hex::decode(i).unwrap_or_default()),
        }
    }

    fn label(label: &str) -> Self {
        Self {
            label: Some(label.to_owned()),
            id: None,
        }
    }

    /// Attributes that select the key's objects of `class`.
    fn template(&self, class: ObjectClass) -> Vec<Attribute> {
        let mut t = vec![Attribute::Class(class)];
        if let Some(l) = &self.label {
            t.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(i) = &self.id {
            t.push(Attribute::Id(i.clone()));
        }
        t
    }

    fn describe(&self) -> String {
        match (&self.label, &self.id) {
            (Some(l), Some(i)) => format!("key {l:?} id {}", hex::encode(i)),
            (Some(l), None) => format!("key {l:?}"),
            (None, Some(i)) => format!("key id {}", hex::encode(i)),
            (None, None) => String::new(),
        }
    }
}

/// A loaded and initialized PKCS#11 module, once per process and path:
/// two contexts of one module would finalize each other's sessions.
struct Module {
    path: PathBuf,
    ctx: Pkcs11,
    /// Held (read) by every use of the module; written only to finalize
    /// and initialize it again, which must not overlap any call and leaves
    /// no session of the old initialization behind.
    lock: RwLock<()>,
    /// When the module was last finalized and initialized again (at most
    /// once a second).
    reinitialized: Mutex<Option<tokio::time::Instant>>,
    /// The tokens in use on it (their sessions end when it is finalized).
    tokens: Mutex<Vec<Weak<Token>>>,
}

/// The modules loaded in this process. They stay loaded until it exits:
/// a module whose last key went away would otherwise be finalized while a
/// new key could be opening it again.
static MODULES: Mutex<Vec<Arc<Module>>> = Mutex::new(Vec::new());

/// A token on a module, with a PIN source, shared by every key on it.
struct Token {
    module: Arc<Module>,
    config: Pkcs11KeyConfig,
    slot: Mutex<Option<Slot>>,
    /// Sessions not in use (logged in).
    idle: Mutex<Vec<Session>>,
    /// Bumped whenever sessions are dropped: object handles found before
    /// are looked up again.
    epoch: AtomicU64,
    /// One per session; held by the blocking task that signs, so a caller
    /// that stops waiting does not free it while the token still works.
    permits: Arc<tokio::sync::Semaphore>,
    /// How many permits there are: the largest `sessions` of the keys
    /// that share the token.
    sessions: Mutex<usize>,
    /// The digest of a PIN the token refused: not tried again until the
    /// PIN source holds another (each wrong try counts towards the token
    /// locking the PIN).
    refused_pin: Mutex<Option<[u8; 32]>>,
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Module {
    fn get(path: &std::path::Path) -> Result<Arc<Module>, KeyOpenError> {
        // One module reached by two paths is still one module.
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let mut modules = lock(&MODULES);
        if let Some(m) = modules.iter().find(|m| m.path == canonical) {
            return Ok(m.clone());
        }
        let ctx = Pkcs11::new(path).map_err(|e| store_err(format!("{}: {e}", path.display())))?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(store_err(format!("C_Initialize: {}", describe(&e)))),
        }
        let module = Arc::new(Module {
            path: canonical,
            ctx,
            lock: RwLock::new(()),
            reinitialized: Mutex::new(None),
            tokens: Mutex::new(Vec::new()),
        });
        modules.push(module.clone());
        Ok(module)
    }

    /// Finalizes and initializes the module again, waiting for every call
    /// in progress and closing every token's sessions first (modules list
    /// their tokens when initialized: one that went away and came back is
    /// seen only after this). At most once a second.
    fn reinitialize(&self) {
        {
            let mut last = lock(&self.reinitialized);
            if last
                .is_some_and(|t| signet_core::clock::elapsed(t) < std::time::Duration::from_secs(1))
            {
                return;
            }
            *last = Some(signet_core::clock::monotonic());
        }
        let _exclusive = self.lock.write().unwrap_or_else(|e| e.into_inner());
        let tokens: Vec<_> = lock(&self.tokens)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for t in &tokens {
            t.reset();
        }
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
}

impl Token {
    /// The token `config` names, on its module: both shared with every
    /// other key that names them, or loaded and initialized now (blocking).
    fn get(config: &Pkcs11KeyConfig) -> Result<Arc<Token>, KeyOpenError> {
        let module = Module::get(&config.module)?;
        let mut tokens = lock(&module.tokens);
        tokens.retain(|t| t.strong_count() > 0);
        if let Some(t) = tokens
            .iter()
            .filter_map(Weak::upgrade)
            .find(|t| t.config.same_token(config))
        {
            let mut sessions = lock(&t.sessions);
            if config.sessions > *sessions {
                t.permits.add_permits(config.sessions - *sessions);
                *sessions = config.sessions;
            }
            drop(sessions);
            return Ok(t);
        }
        let token = Arc::new(Token {
            module: module.clone(),
            config: config.clone(),
            slot: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
            permits: Arc::new(tokio::sync::Semaphore::new(config.sessions)),
            sessions: Mutex::new(config.sessions),
            refused_pin: Mutex::new(None),
        });
        tokens.push(Arc::downgrade(&token));
        Ok(token)
    }

    fn find_slot(&self) -> Result<Slot, String> {
        if let Some(slot) = *lock(&self.slot) {
            return Ok(slot);
        }
        let slots = self
            .module
            .ctx
            .get_slots_with_token()
            .map_err(|e| format!("listing slots: {}", describe(&e)))?;
        let slot = match (&self.config.token_label, self.config.slot) {
            (Some(label), _) => slots
                .into_iter()
                .find(|s| {
                    self.module
                        .ctx
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
        *lock(&self.slot) = Some(slot);
        Ok(slot)
    }

    /// After a failure that may mean the token went away: sessions and
    /// object handles are dropped, the slot is looked up again.
    fn reset(&self) {
        lock(&self.idle).clear();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        *lock(&self.slot) = None;
    }

    /// Logs `session` in as the user, unless the PIN is one the token
    /// refused.
    fn login(&self, session: &Session) -> Result<(), CkOrConfig> {
        let (pin, pin_digest) = self.config.pin().map_err(CkOrConfig::Config)?;
        let mut refused = lock(&self.refused_pin);
        if *refused == Some(pin_digest) {
            return Err(CkOrConfig::Config(
                "the token refused this PIN; not trying it again until the PIN source changes"
                    .into(),
            ));
        }
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                *refused = None;
                Ok(())
            }
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
                Err(CkOrConfig::Ck(e))
            }
            Err(e) => Err(CkOrConfig::Ck(e)),
        }
    }

    /// An idle session, or a new one, logged in. The caller holds the
    /// module lock (shared).
    fn session(&self) -> Result<Session, CkOrConfig> {
        if let Some(session) = lock(&self.idle).pop() {
            return Ok(session);
        }
        let slot = self.find_slot().map_err(CkOrConfig::Config)?;
        let session = self
            .module
            .ctx
            .open_ro_session(slot)
            .map_err(CkOrConfig::Ck)?;
        self.login(&session)?;
        Ok(session)
    }

    fn give_back(&self, session: Session) {
        lock(&self.idle).push(session);
    }

    /// Runs `f` on a logged-in session with the module held (shared): a
    /// pooled read-only one, or a new read-write one (to make or destroy
    /// objects, closed after). A token that is not there has the module
    /// initialized again for the next call.
    fn with_session<T>(
        &self,
        read_write: bool,
        f: impl FnOnce(&Session) -> Result<T, CkOrConfig>,
    ) -> Result<T, KeyStoreError> {
        let result = {
            let _shared = self.module.lock.read().unwrap_or_else(|e| e.into_inner());
            let session = if read_write {
                self.find_slot()
                    .map_err(CkOrConfig::Config)
                    .and_then(|slot| {
                        self.module
                            .ctx
                            .open_rw_session(slot)
                            .map_err(CkOrConfig::Ck)
                    })
                    .and_then(|s| self.login(&s).map(|()| s))
            } else {
                self.session()
            };
            session.and_then(|session| {
                let out = f(&session);
                if out.is_ok() && !read_write {
                    self.give_back(session);
                }
                out
            })
        };
        if let Err(CkOrConfig::Config(m)) = &result
            && m.starts_with("no token")
        {
            // Looked for again after the module is initialized anew.
            self.module.reinitialize();
        }
        result.map_err(|e| self.classify(e))
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

    /// Makes a token key pair labelled `label`: the private half
    /// sensitive, not extractable, for signing only.
    fn generate(&self, algorithm: KeyAlgorithm, label: &str) -> Result<(), KeyStoreError> {
        let refused = |m: &str| KeyStoreError::Refused(m.to_owned());
        let mut id = [0u8; 16];
        signet_core::crypto::random_bytes(&mut id);
        let common = |public: bool| {
            vec![
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id.to_vec()),
                if public {
                    Attribute::Verify(true)
                } else {
                    Attribute::Sign(true)
                },
            ]
        };
        let mut public = common(true);
        let mut private = common(false);
        private.extend([
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
        ]);
        let mechanism = match algorithm {
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
                let oid: &[u8] = if algorithm == KeyAlgorithm::EcdsaP256 {
                    &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
                } else {
                    &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]
                };
                public.push(Attribute::EcParams(oid.to_vec()));
                Mechanism::EccKeyPairGen
            }
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                let bits: u64 = match algorithm {
                    KeyAlgorithm::Rsa2048 => 2048,
                    KeyAlgorithm::Rsa3072 => 3072,
                    _ => 4096,
                };
                public.extend([
                    Attribute::ModulusBits(
                        cryptoki::types::Ulong::try_from(bits as usize)
                            .map_err(|e| refused(&e.to_string()))?,
                    ),
                    Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                ]);
                Mechanism::RsaPkcsKeyPairGen
            }
            KeyAlgorithm::Ed25519 => {
                return Err(refused("Ed25519 keys are not supported in PKCS#11 tokens"));
            }
        };
        self.with_session(true, |session| {
            session
                .generate_key_pair(&mechanism, &public, &private)
                .map(|_| ())
                .map_err(CkOrConfig::Ck)
        })
    }

    /// Destroys both halves of every key pair labelled by `is_ours` (given
    /// each private key's label); returns how many private keys.
    fn destroy(&self, is_ours: impl Fn(&str) -> bool) -> Result<usize, KeyStoreError> {
        self.with_session(true, |session| {
            let mut destroyed = 0;
            let privates = session
                .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
                .map_err(CkOrConfig::Ck)?;
            for object in privates {
                let attrs = session
                    .get_attributes(object, &[AttributeType::Label])
                    .map_err(CkOrConfig::Ck)?;
                let Some(label) = attrs.into_iter().find_map(|a| match a {
                    Attribute::Label(l) => String::from_utf8(l).ok(),
                    _ => None,
                }) else {
                    continue;
                };
                if !is_ours(&label) {
                    continue;
                }
                // One that cannot be destroyed does not stop the others.
                let publics = session
                    .find_objects(&KeySelector::label(&label).template(ObjectClass::PUBLIC_KEY))
                    .unwrap_or_default();
                for p in publics.into_iter().chain([object]) {
                    if let Err(e) = session.destroy_object(p) {
                        tracing::warn!(key = %label, error = %describe(&e), "PKCS#11: C_DestroyObject failed");
                    }
                }
                destroyed += 1;
            }
            Ok(destroyed)
        })
    }
}

/// A key in a PKCS#11 token.
pub struct Pkcs11Key {
    token: Arc<Token>,
    selector: KeySelector,
    handle: Mutex<Option<Found>>,
    public: PublicKey,
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

impl Pkcs11Key {
    /// Loads the module (once per process), logs in and reads the key's
    /// public half.
    pub async fn open(config: Pkcs11KeyConfig) -> Result<Arc<Self>, KeyOpenError> {
        config.check().map_err(store_err)?;
        let selector = KeySelector::from_config(&config);
        let token = tokio::task::spawn_blocking(move || Token::get(&config))
            .await
            .map_err(|e| store_err(e.to_string()))??;
        Self::on_token(token, selector).await
    }

    async fn on_token(token: Arc<Token>, selector: KeySelector) -> Result<Arc<Self>, KeyOpenError> {
        let id = format!("{} {}", token.config.describe_token(), selector.describe());
        let t = token.clone();
        let s = selector.clone();
        let (public, handle) = tokio::task::spawn_blocking(move || {
            let _shared = t.module.lock.read().unwrap_or_else(|e| e.into_inner());
            let session = t.session()?;
            let epoch = t.epoch.load(Ordering::SeqCst);
            let handle = find_private(&session, &s)?;
            let public = public_key(&session, &s, handle)?;
            t.give_back(session);
            Ok::<_, CkOrConfig>((public, (epoch, handle)))
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
            selector,
            handle: Mutex::new(Some(handle)),
            public,
            id,
        }))
    }
}

/// A key's private object, and the token's epoch when it was found.
type Found = (u64, ObjectHandle);

/// A signature's work on the blocking pool: the key's handle as last
/// found, found again after the token dropped its sessions.
struct SignJob {
    token: Arc<Token>,
    selector: KeySelector,
    handle: Option<Found>,
}

impl SignJob {
    /// The signature, and the key's handle if it was found anew.
    fn run(
        self,
        mechanism: &Mechanism<'_>,
        data: &[u8],
    ) -> (Result<Vec<u8>, KeyStoreError>, Option<Found>) {
        let mut found = None;
        let result = self.token.with_session(false, |session| {
            let epoch = self.token.epoch.load(Ordering::SeqCst);
            let key = match self.handle {
                Some((e, h)) if e == epoch => h,
                _ => {
                    let h = find_private(session, &self.selector)?;
                    found = Some((epoch, h));
                    h
                }
            };
            session.sign(mechanism, key, data).map_err(CkOrConfig::Ck)
        });
        (result, found)
    }
}

fn find_private(session: &Session, selector: &KeySelector) -> Result<ObjectHandle, CkOrConfig> {
    let found = session
        .find_objects(&selector.template(ObjectClass::PRIVATE_KEY))
        .map_err(CkOrConfig::Ck)?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(CkOrConfig::Config(format!(
            "no private {} in the token",
            selector.describe()
        ))),
        _ => Err(CkOrConfig::Config(
            "more than one private key matches; name it by key_id too".into(),
        )),
    }
}

/// The key's public half, from the token's public key object with the
/// same label/ID.
fn public_key(
    session: &Session,
    selector: &KeySelector,
    private: ObjectHandle,
) -> Result<PublicKey, CkOrConfig> {
    let key_type = session
        .get_attributes(private, &[AttributeType::KeyType])
        .map_err(CkOrConfig::Ck)?
        .into_iter()
        .find_map(|a| match a {
            Attribute::KeyType(t) => Some(t),
            _ => None,
        })
        .ok_or_else(|| CkOrConfig::Config("the key has no CKA_KEY_TYPE".into()))?;
    let public = session
        .find_objects(&selector.template(ObjectClass::PUBLIC_KEY))
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
    };
    key.map_err(|e| CkOrConfig::Config(e.to_string()))
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
            .token
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| KeyStoreError::Unavailable("closing".into()))?;
        let job = SignJob {
            token: self.token.clone(),
            selector: self.selector.clone(),
            handle: *lock(&self.handle),
        };
        let (signature, found) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mechanism = if ec {
                Mechanism::Ecdsa
            } else {
                Mechanism::RsaPkcs
            };
            job.run(&mechanism, &data)
        })
        .await
        .map_err(|e| KeyStoreError::Unavailable(e.to_string()))?;
        if let Some(found) = found {
            *lock(&self.handle) = Some(found);
        }
        let signature = signature?;
        if ec {
            ecdsa_signature_to_der(&signature)
        } else {
            Ok(signature)
        }
    }
}

/// Makes intermediates' keys in a PKCS#11 token (see the module
/// documentation).
pub struct Pkcs11Keys {
    token: Arc<Token>,
}

impl std::fmt::Debug for Pkcs11Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Keys")
            .field("module", &self.token.config.module)
            .field("token", &self.token.config.describe_token())
            .finish_non_exhaustive()
    }
}

impl Pkcs11Keys {
    /// Loads the module (once per process) and logs in to the token.
    pub async fn open(config: Pkcs11KeyConfig) -> Result<Arc<Self>, KeyOpenError> {
        config.check_for_generation().map_err(store_err)?;
        let token = tokio::task::spawn_blocking(move || {
            let token = Token::get(&config)?;
            token
                .with_session(false, |_| Ok(()))
                .map_err(|e| store_err(e.to_string()))?;
            Ok::<_, KeyOpenError>(token)
        })
        .await
        .map_err(|e| store_err(e.to_string()))??;
        Ok(Arc::new(Self { token }))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Token) -> Result<T, KeyStoreError> + Send + 'static,
    ) -> Result<T, KeyStoreError> {
        let permit = self
            .token
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| KeyStoreError::Unavailable("closing".into()))?;
        let token = self.token.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&token)
        })
        .await
        .map_err(|e| KeyStoreError::Unavailable(e.to_string()))?
    }
}

#[async_trait]
impl KeyFactory for Pkcs11Keys {
    fn describe(&self) -> KeyDescription {
        KeyDescription {
            store: "pkcs11",
            id: self.token.config.describe_token(),
        }
    }

    async fn generate(
        &self,
        algorithm: KeyAlgorithm,
        owner: &str,
        now: SystemTime,
    ) -> Result<GeneratedKey, KeyStoreError> {
        let name = signet_core::key::generated_key_name(owner, now);
        let label = name.clone();
        self.blocking(move |t| t.generate(algorithm, &label))
            .await?;
        match Pkcs11Key::on_token(self.token.clone(), KeySelector::label(&name)).await {
            Ok(handle) => Ok(GeneratedKey { handle, name }),
            Err(e) => {
                // Not left behind: nothing would retire it.
                let made = name.clone();
                let _ = self.blocking(move |t| t.destroy(|l| l == made)).await;
                Err(KeyStoreError::Unavailable(format!(
                    "reading the key it made: {e}"
                )))
            }
        }
    }

    async fn retire(&self, key: &GeneratedKey) -> Result<(), KeyStoreError> {
        let name = key.name.clone();
        self.blocking(move |t| t.destroy(|label| label == name))
            .await
            .map(drop)
    }

    async fn sweep(
        &self,
        owner: &str,
        before: SystemTime,
        keep: &str,
    ) -> Result<usize, KeyStoreError> {
        let (owner, keep) = (owner.to_owned(), keep.to_owned());
        self.blocking(move |t| {
            t.destroy(|label| {
                label != keep && generated_key_time(&owner, label).is_some_and(|made| made < before)
            })
        })
        .await
    }
}
