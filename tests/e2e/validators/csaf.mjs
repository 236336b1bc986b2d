// Validates CSAF 2.0 documents with the BSI's csaf-validator-lib: the JSON schema and every
// mandatory test (section 6.1 of the standard).
//
//   node csaf.mjs FILE...
//
// Prints each error and exits 1 if any document is invalid.
import { readFileSync } from 'node:fs'
import validateStrict from '@secvisogram/csaf-validator-lib/validateStrict.js'
import * as schema from '@secvisogram/csaf-validator-lib/schemaTests.js'
import * as mandatory from '@secvisogram/csaf-validator-lib/mandatoryTests.js'

const tests = Object.values(schema).concat(Object.values(mandatory))
let failed = false
for (const file of process.argv.slice(2)) {
  const doc = JSON.parse(readFileSync(file, 'utf8'))
  const result = await validateStrict(tests, doc)
  for (const t of result.tests) {
    for (const e of t.errors) {
      console.log(`${file}: ${t.name}: ${e.instancePath} ${e.message}`)
    }
  }
  console.log(`csaf: ${file}: ${result.isValid ? 'valid' : 'INVALID'}`)
  if (!result.isValid) failed = true
}
process.exit(failed ? 1 : 0)
