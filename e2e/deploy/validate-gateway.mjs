// Validate Envoy Gateway and Gateway API objects (JSON lines on standard input, one object
// each) with the published models of @kubernetes-models (generated from the projects' Go
// types). Prints one line per object: "OK" or "FAIL <message>". Those validators accept unknown
// fields, so every field name is also checked against the models' type declarations (.d.ts):
// each class lists its properties (inherited ones included) and imports their types.
import { createInterface } from "node:readline";
import { readFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as eg from "@kubernetes-models/envoy-gateway/gateway.envoyproxy.io/v1alpha1";
import * as gw from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1";

const modules = join(dirname(fileURLToPath(import.meta.url)), "node_modules");
const declared = new Map(); // .d.ts path -> {props: Map(name -> type), imports: Map(type -> path)}

function dts(path) {
  if (declared.has(path)) return declared.get(path);
  const text = readFileSync(path, "utf8");
  const imports = new Map();
  for (const m of text.matchAll(/import \{ (\w+) \} from "([^"]+)";/g)) {
    const spec = m[2].replace(/\.js$/, "");
    const file = spec.startsWith(".") ? join(dirname(path), spec) : join(modules, spec);
    imports.set(m[1], file + ".d.ts");
  }
  const props = new Map();
  const body = text.match(/export declare class \w+ extends Model<[^>]+>[^{]*\{([\s\S]*?)\n\}/);
  for (const m of (body ? body[1] : "").matchAll(/^ {4}"([^"]+)"\??: ([^;]+);$/gm)) props.set(m[1], m[2]);
  const d = { props, imports };
  declared.set(path, d);
  return d;
}

// The unknown field names in `value`, checked against the type `type` declared in `path`.
function unknownFields(value, type, path, at, out) {
  if (value === null || typeof value !== "object") return;
  type = type.trim().replace(/^Array<(.*)>$/s, "$1");
  if (Array.isArray(value)) {
    value.forEach((v, i) => unknownFields(v, type, path, `${at}[${i}]`, out));
    return;
  }
  const file = dts(path).imports.get(type);
  if (!file) return; // a map, a string or another leaf: free-form by declaration
  if (!existsSync(file)) {
    // Only free-form JSON may come from a package that is not installed.
    if (!/V1JSON$/.test(type)) out.push(`${at}: cannot read the declaration of ${type}`);
    return;
  }
  const { props } = dts(file);
  if (props.size === 0) return; // an alias (an enum or a scalar)
  for (const [k, v] of Object.entries(value)) {
    if (!props.has(k)) out.push(`${at}.${k}: unknown field`);
    else unknownFields(v, props.get(k), file, `${at}.${k}`, out);
  }
}

const groupDirs = {
  "gateway.envoyproxy.io/v1alpha1": join(modules, "@kubernetes-models/envoy-gateway/gateway.envoyproxy.io/v1alpha1"),
  "gateway.networking.k8s.io/v1": join(modules, "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1"),
};

const groups = { "gateway.envoyproxy.io/v1alpha1": eg, "gateway.networking.k8s.io/v1": gw };

// Dynamic modules (EnvoyProxy spec.dynamicModules, EnvoyExtensionPolicy spec.dynamicModule)
// came to Envoy Gateway after the newest published models (@kubernetes-models/envoy-gateway
// 2.0.0): they are taken out before the model's validation and checked here against the fields
// and types of Envoy Gateway's api/v1alpha1/dynamic_module_types.go and
// envoyextensionpolicy_types.go.
const str = (v) => typeof v === "string";
const bool = (v) => typeof v === "boolean";
const MODULE_NAME = /^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$/;
const dynamicModuleFields = {
  EnvoyProxy: ["dynamicModules", {
    name: (v) => str(v) && MODULE_NAME.test(v),
    source: (v) => v && ["Local", "Remote"].includes(v.type)
      && Object.keys(v).every((k) => ["type", "local", "remote"].includes(k))
      && (v.type !== "Local" || (v.local && str(v.local.path) && v.local.path.startsWith("/")
        && Object.keys(v.local).every((k) => k === "path")))
      && (v.type !== "Remote" || (v.remote && str(v.remote.url)
        && Object.keys(v.remote).every((k) => ["url", "sha256"].includes(k)))),
    doNotClose: bool,
    loadGlobally: bool,
  }, ["name", "source"], 16],
  EnvoyExtensionPolicy: ["dynamicModule", {
    name: (v) => str(v) && MODULE_NAME.test(v),
    filterName: str,
    config: (v) => v !== null && typeof v === "object",
    terminalFilter: bool,
  }, ["name"], 16],
};

// Errors in `doc`'s dynamic-module list, which is removed from it.
function takeDynamicModules(doc) {
  const rule = dynamicModuleFields[doc.kind];
  if (!rule || !doc.spec || !(rule[0] in doc.spec)) return [];
  const [field, fields, required, max] = rule;
  const list = doc.spec[field];
  delete doc.spec[field];
  if (!Array.isArray(list) || list.length === 0 || list.length > max) {
    return [`spec.${field}: a list of 1 to ${max} entries`];
  }
  const out = [];
  list.forEach((entry, i) => {
    for (const k of required) if (!(k in entry)) out.push(`spec.${field}[${i}].${k}: required`);
    for (const [k, v] of Object.entries(entry)) {
      if (!(k in fields)) out.push(`spec.${field}[${i}].${k}: unknown field`);
      else if (!fields[k](v)) out.push(`spec.${field}[${i}].${k}: invalid value`);
    }
  });
  return out;
}
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const doc = JSON.parse(line);
  const Model = groups[doc.apiVersion]?.[doc.kind];
  if (!Model) {
    console.log(`FAIL no schema for ${doc.apiVersion} ${doc.kind}`);
    continue;
  }
  const moduleErrors = takeDynamicModules(doc);
  try {
    new Model(doc).validate();
    const kindFile = join(groupDirs[doc.apiVersion], `${doc.kind}.d.ts`);
    const { props } = dts(kindFile);
    const unknown = [...moduleErrors];
    for (const [k, v] of Object.entries(doc)) {
      if (!props.has(k)) unknown.push(`${k}: unknown field`);
      else unknownFields(v, props.get(k), kindFile, k, unknown);
    }
    console.log(unknown.length ? `FAIL ${unknown.join("; ")}` : "OK");
  } catch (e) {
    console.log(`FAIL ${String(e.message ?? e).replace(/\s+/g, " ")}`);
  }
}
