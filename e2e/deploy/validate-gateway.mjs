// Validate Envoy Gateway and Gateway API objects (JSON lines on standard input, one object
// each) with the published models of @kubernetes-models (generated from the projects' Go
// types). Prints one line per object: "OK" or "FAIL <message>". Those validators accept unknown
// fields; validate.py checks field names on its own.
import { createInterface } from "node:readline";
import * as eg from "@kubernetes-models/envoy-gateway/gateway.envoyproxy.io/v1alpha1";
import * as gw from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1";

const groups = { "gateway.envoyproxy.io/v1alpha1": eg, "gateway.networking.k8s.io/v1": gw };
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const doc = JSON.parse(line);
  const Model = groups[doc.apiVersion]?.[doc.kind];
  if (!Model) {
    console.log(`FAIL no schema for ${doc.apiVersion} ${doc.kind}`);
    continue;
  }
  try {
    new Model(doc).validate();
    console.log("OK");
  } catch (e) {
    console.log(`FAIL ${String(e.message ?? e).replace(/\s+/g, " ")}`);
  }
}
