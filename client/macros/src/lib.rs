//! Attribute macros for Ember: `#[ember::task]` on functions, `#[ember::actor]` on an actor's
//! `impl` block, and `#[ember::main]` on the program's `async fn main`.
//!
//! Resource needs are declared in the attribute: `gpus = 0.5`, `gpu_memory = "8GiB"`,
//! `accelerator = "H100"`, `cpus = 2`, `resources(tpu = 1)`, `priority = 5`, `strategy = "spread"`.
//! Tasks also take `max_retries = 3` and `retry_user_errors = true`; actors take
//! `max_restarts = -1`, `max_task_retries = 1`, and `checkpoint` or a checkpoint policy
//! (`checkpoint_every = 1` call, `checkpoint_interval_ms = 5000`) when the type implements
//! `ember::Checkpoint`.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Expr, FnArg, GenericArgument, ImplItem, ItemFn, ItemImpl, Lit, Meta, Pat, PathArguments,
    ReturnType, Token, Type,
};

/// Declares a task function with its resource needs and registers it with Ember.
///
/// Generates a module of the same name with `remote(args..) -> ember::TaskCall<T>`.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, expand_task)
}

/// Declares an actor on its `impl` block, with its resource needs, and registers it.
///
/// The block must have `fn new(..) -> Self`; every `&self`/`&mut self` method becomes callable
/// through a generated `<Type>Handle`, and `<Type>::remote(args..)` describes a spawn.
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, expand_actor)
}

/// Wraps `async fn main`: serves the worker or executor role when Ember started this process
/// as one, and otherwise runs `main` on a Tokio runtime.
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(Span::call_site(), "#[ember::main] takes no arguments")
            .to_compile_error()
            .into();
    }
    let f = match syn::parse::<ItemFn>(item) {
        Ok(f) => f,
        Err(e) => return e.to_compile_error().into(),
    };
    if f.sig.asyncness.is_none() {
        return syn::Error::new(f.sig.span(), "#[ember::main] goes on an `async fn main`")
            .to_compile_error()
            .into();
    }
    let attrs = &f.attrs;
    let vis = &f.vis;
    let ret = &f.sig.output;
    let body = &f.block;
    quote! {
        #(#attrs)*
        #vis fn main() #ret {
            ::ember::__private::serve_role_if_asked();
            ::ember::__private::tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cannot start the Tokio runtime")
                .block_on(async move #body)
        }
    }
    .into()
}

fn expand(
    attr: TokenStream,
    item: TokenStream,
    f: fn(Options, TokenStream2) -> syn::Result<TokenStream2>,
) -> TokenStream {
    let parsed = Punctuated::<Meta, Token![,]>::parse_terminated.parse(attr);
    let result = parsed
        .and_then(Options::parse)
        .and_then(|opts| f(opts, item.into()));
    match result {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Resource needs and actor settings read from the attribute.
struct Options {
    builder: Vec<TokenStream2>,
    /// The actor type implements `ember::Checkpoint`.
    checkpoint: bool,
}

impl Options {
    fn parse(metas: Punctuated<Meta, Token![,]>) -> syn::Result<Self> {
        let mut builder = Vec::new();
        let mut checkpoint = false;
        for meta in metas {
            match &meta {
                Meta::Path(p) if p.is_ident("checkpoint") => {
                    checkpoint = true;
                    builder.push(quote!(.checkpoint()));
                }
                Meta::NameValue(nv) => {
                    let key = nv
                        .path
                        .get_ident()
                        .map(|i| i.to_string())
                        .unwrap_or_default();
                    let value = &nv.value;
                    let call = match key.as_str() {
                        "gpus" => quote!(.gpus(#value as f64)),
                        "cpus" => quote!(.cpus(#value as f64)),
                        "gpu_memory" => quote!(.gpu_memory(#value)),
                        "accelerator" => quote!(.accelerator(#value)),
                        "priority" => quote!(.priority(#value)),
                        "max_retries" => quote!(.max_retries(#value)),
                        "retry_user_errors" => quote!(.retry_user_errors(#value)),
                        "max_restarts" => quote!(.max_restarts(#value)),
                        "max_task_retries" => quote!(.max_task_retries(#value)),
                        "checkpoint_every" => {
                            checkpoint = true;
                            quote!(.checkpoint_every(#value))
                        }
                        "checkpoint_interval_ms" => {
                            checkpoint = true;
                            quote!(.checkpoint_interval(::std::time::Duration::from_millis(#value)))
                        }
                        "strategy" => {
                            let s = lit_str(value)?;
                            match s.as_str() {
                                "pack" => quote!(.strategy(::ember::Strategy::Pack)),
                                "spread" => quote!(.strategy(::ember::Strategy::Spread)),
                                _ => {
                                    return Err(syn::Error::new(
                                        value.span(),
                                        "strategy is \"pack\" or \"spread\"",
                                    ))
                                }
                            }
                        }
                        _ => {
                            return Err(syn::Error::new(
                                nv.path.span(),
                                format!(
                                    "unknown setting `{key}`: use gpus, gpu_memory, accelerator, \
                                     cpus, resources(..), priority, strategy, max_retries, \
                                     retry_user_errors, max_restarts, max_task_retries, \
                                     checkpoint, checkpoint_every or checkpoint_interval_ms"
                                ),
                            ))
                        }
                    };
                    builder.push(call);
                }
                Meta::List(list) if list.path.is_ident("resources") => {
                    let inner = Punctuated::<Meta, Token![,]>::parse_terminated
                        .parse2(list.tokens.clone())?;
                    for m in inner {
                        let Meta::NameValue(nv) = m else {
                            return Err(syn::Error::new(
                                m.span(),
                                "write resources(name = amount)",
                            ));
                        };
                        let name = nv
                            .path
                            .get_ident()
                            .ok_or_else(|| syn::Error::new(nv.path.span(), "a resource name"))?
                            .to_string();
                        let value = &nv.value;
                        builder.push(quote!(.resource(#name, #value as f64)));
                    }
                }
                _ => {
                    return Err(syn::Error::new(
                        meta.span(),
                        "expected `name = value` or `resources(name = amount)`",
                    ))
                }
            }
        }
        Ok(Options {
            builder,
            checkpoint,
        })
    }

    fn tokens(&self) -> TokenStream2 {
        let calls = &self.builder;
        quote!(::ember::Options::new() #(#calls)*)
    }
}

fn lit_str(e: &Expr) -> syn::Result<String> {
    if let Expr::Lit(l) = e {
        if let Lit::Str(s) = &l.lit {
            return Ok(s.value());
        }
    }
    Err(syn::Error::new(e.span(), "expected a string"))
}

/// Parameters of a function or method: names and types, owned types only.
fn params<'a>(
    inputs: impl Iterator<Item = &'a FnArg>,
) -> syn::Result<(Vec<syn::Ident>, Vec<Type>)> {
    let mut names = Vec::new();
    let mut types = Vec::new();
    for (i, arg) in inputs.enumerate() {
        let FnArg::Typed(pt) = arg else { continue };
        if let Type::Reference(r) = &*pt.ty {
            return Err(syn::Error::new(
                r.span(),
                "arguments travel over the network: take owned types (String, Vec<T>), not references",
            ));
        }
        let name = match &*pt.pat {
            Pat::Ident(p) => p.ident.clone(),
            _ => format_ident!("__arg{}", i),
        };
        names.push(name);
        types.push((*pt.ty).clone());
    }
    Ok((names, types))
}

/// The type a call returns to its caller, and whether the function returns a `Result`.
fn result_type(ret: &ReturnType) -> (Type, bool) {
    match ret {
        ReturnType::Default => (syn::parse_quote!(()), false),
        ReturnType::Type(_, ty) => {
            if let Type::Path(p) = &**ty {
                if let Some(last) = p.path.segments.last() {
                    if last.ident == "Result" {
                        if let PathArguments::AngleBracketed(args) = &last.arguments {
                            if let Some(GenericArgument::Type(ok)) = args.args.first() {
                                return (ok.clone(), true);
                            }
                        }
                    }
                }
            }
            ((**ty).clone(), false)
        }
    }
}

/// Turns the user's return value into the archived result or a user error.
fn encode_output(fallible: bool, value: TokenStream2) -> TokenStream2 {
    if fallible {
        quote! {
            match #value {
                Ok(v) => ::ember::__private::encode_result(&v),
                Err(e) => Err(::ember::__private::CallError::User(e.to_string())),
            }
        }
    } else {
        quote!(::ember::__private::encode_result(&#value))
    }
}

fn expand_task(opts: Options, item: TokenStream2) -> syn::Result<TokenStream2> {
    let f: ItemFn = syn::parse2(item)?;
    if f.sig.asyncness.is_some() || !f.sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            f.sig.span(),
            "#[ember::task] goes on a plain, non-generic, non-async fn",
        ));
    }
    if opts.checkpoint {
        return Err(syn::Error::new(
            f.sig.span(),
            "checkpoints are for actors: a task has no state to save",
        ));
    }
    let name = &f.sig.ident;
    let vis = &f.vis;
    let (args, types) = params(f.sig.inputs.iter())?;
    let (out, fallible) = result_type(&f.sig.output);
    let options = opts.tokens();
    let call = encode_output(fallible, quote!(super::#name(#(#args),*)));
    let doc = format!("Remote calls of [`{name}`](fn@{name}) on an Ember cluster.");
    Ok(quote! {
        #f

        #[doc = #doc]
        #[allow(non_snake_case, unused_imports)]
        #vis mod #name {
            use super::*;

            /// The name this task is registered under.
            pub const NAME: &str = module_path!();

            /// Describes one remote call with the declared resource needs; submit it with
            /// `Cluster::submit` or `Cluster::run`.
            pub fn remote(#(#args: #types),*) -> ::ember::TaskCall<#out> {
                ::ember::TaskCall::new(NAME, &(#(#args,)*), #options)
            }

            fn __invoke(
                __bytes: &[u8],
            ) -> ::std::result::Result<::std::vec::Vec<u8>, ::ember::__private::CallError> {
                let (#(#args,)*): (#(#types,)*) = ::ember::__private::decode_args(__bytes)?;
                #call
            }

            ::ember::__private::inventory::submit! {
                ::ember::__private::TaskEntry { name: NAME, invoke: __invoke }
            }
        }
    })
}

fn expand_actor(opts: Options, item: TokenStream2) -> syn::Result<TokenStream2> {
    let block: ItemImpl = syn::parse2(item)?;
    if block.trait_.is_some() || !block.generics.params.is_empty() {
        return Err(syn::Error::new(
            block.span(),
            "#[ember::actor] goes on the inherent, non-generic impl block of the actor type",
        ));
    }
    let Type::Path(self_path) = &*block.self_ty else {
        return Err(syn::Error::new(
            block.self_ty.span(),
            "expected a type name",
        ));
    };
    let ty = &self_path
        .path
        .segments
        .last()
        .expect("a path has a segment")
        .ident;
    let handle = format_ident!("{}Handle", ty);
    let type_name = ty.to_string();
    let options = opts.tokens();

    let mut ctor = None;
    let mut stubs = Vec::new();
    let mut arms = Vec::new();
    for item in &block.items {
        let ImplItem::Fn(m) = item else { continue };
        let mname = &m.sig.ident;
        let receiver = m.sig.receiver();
        if receiver.is_none() && mname == "new" {
            let (args, types) = params(m.sig.inputs.iter())?;
            ctor = Some((args, types));
            continue;
        }
        let Some(recv) = receiver else { continue };
        if recv.reference.is_none() {
            continue;
        }
        if m.sig.asyncness.is_some() {
            return Err(syn::Error::new(m.sig.span(), "actor methods are plain fns"));
        }
        let (args, types) = params(m.sig.inputs.iter())?;
        let (out, fallible) = result_type(&m.sig.output);
        let method = mname.to_string();
        let call = encode_output(fallible, quote!(self.0.#mname(#(#args),*)));
        let doc = format!("Calls [`{type_name}::{method}`] on the remote actor.");
        stubs.push(quote! {
            #[doc = #doc]
            pub async fn #mname(&self, #(#args: #types),*) -> ::std::result::Result<#out, ::ember::Error> {
                self.actor.call(#method, &(#(#args,)*)).await
            }
        });
        arms.push(quote! {
            #method => {
                let (#(#args,)*): (#(#types,)*) = ::ember::__private::decode_args(__args)?;
                #call
            }
        });
    }
    let Some((ctor_args, ctor_types)) = ctor else {
        return Err(syn::Error::new(
            block.self_ty.span(),
            "an actor's impl block needs `fn new(..) -> Self`, its constructor",
        ));
    };
    let handle_doc = format!("A handle to a remote [`{type_name}`] actor.");
    let (save, restore) = if opts.checkpoint {
        (
            quote! {
                fn save(
                    &self,
                ) -> ::std::option::Option<
                    ::std::result::Result<::std::vec::Vec<u8>, ::ember::__private::CallError>,
                > {
                    let state = <#ty as ::ember::__private::Checkpoint>::save(&self.0);
                    Some(::ember::__private::encode_result(&state))
                }
            },
            quote!(Some(__restore)),
        )
    } else {
        (quote!(), quote!(None))
    };
    let restore_fn = if opts.checkpoint {
        quote! {
            fn __restore(
                __state: &[u8],
            ) -> ::std::result::Result<
                ::std::boxed::Box<dyn ::ember::__private::ActorInstance>,
                ::ember::__private::CallError,
            > {
                let state = ::ember::__private::decode_args::<
                    <#ty as ::ember::__private::Checkpoint>::State,
                >(__state)?;
                Ok(::std::boxed::Box::new(__Instance(
                    <#ty as ::ember::__private::Checkpoint>::restore(state),
                )))
            }
        }
    } else {
        quote!()
    };
    Ok(quote! {
        #block

        #[doc = #handle_doc]
        #[derive(Clone, Debug)]
        pub struct #handle {
            actor: ::ember::ActorRef,
        }

        impl ::ember::RemoteActor for #handle {
            fn from_ref(actor: ::ember::ActorRef) -> Self {
                #handle { actor }
            }
            fn actor_ref(&self) -> &::ember::ActorRef {
                &self.actor
            }
        }

        impl #handle {
            #(#stubs)*

            /// The untyped reference: id, node, what it was given; `kill()` stops it.
            pub fn actor(&self) -> &::ember::ActorRef {
                &self.actor
            }
        }

        impl #ty {
            /// Describes a remote instance with the declared resource needs; create it with
            /// `Cluster::spawn`.
            pub fn remote(#(#ctor_args: #ctor_types),*) -> ::ember::ActorSpawn<#handle> {
                ::ember::ActorSpawn::new(
                    concat!(module_path!(), "::", #type_name),
                    &(#(#ctor_args,)*),
                    #options,
                )
            }
        }

        const _: () = {
            struct __Instance(#ty);

            impl ::ember::__private::ActorInstance for __Instance {
                fn call(
                    &mut self,
                    __method: &str,
                    __args: &[u8],
                ) -> ::std::result::Result<::std::vec::Vec<u8>, ::ember::__private::CallError> {
                    match __method {
                        #(#arms)*
                        other => Err(::ember::__private::CallError::UnknownMethod(other.to_string())),
                    }
                }

                #save
            }

            #restore_fn

            fn __construct(
                __args: &[u8],
            ) -> ::std::result::Result<
                ::std::boxed::Box<dyn ::ember::__private::ActorInstance>,
                ::ember::__private::CallError,
            > {
                let (#(#ctor_args,)*): (#(#ctor_types,)*) = ::ember::__private::decode_args(__args)?;
                Ok(::std::boxed::Box::new(__Instance(#ty::new(#(#ctor_args),*))))
            }

            ::ember::__private::inventory::submit! {
                ::ember::__private::ActorEntry {
                    name: concat!(module_path!(), "::", #type_name),
                    construct: __construct,
                    restore: #restore,
                }
            }
        };
    })
}
