// A new Azure OpenAI (or AI Services) account with a custom subdomain and local (key) auth disabled:
// callers must present an Entra ID token. The model deployment and role assignments live in
// openai-model.bicep so that they apply the same way to an existing account.

@description('Account name; also its custom subdomain (<name>.openai.azure.com).')
@minLength(2)
@maxLength(64)
param name string

@description('Azure region; must offer the realtime model for the chosen deployment SKU.')
param location string

@description('Tags for the resource.')
param tags object = {}

@description('Account kind: "OpenAI" (Azure OpenAI) or "AIServices" (Azure AI Foundry resource).')
@allowed([
  'OpenAI'
  'AIServices'
])
param kind string = 'OpenAI'

resource account 'Microsoft.CognitiveServices/accounts@2024-10-01' = {
  // checkov:skip=CKV_AZURE_134: the Flex app reaches the account over its public endpoint (no VNet here); local auth is off, so every call needs an Entra ID token with an OpenAI role
  // checkov:skip=CKV_AZURE_238: the account calls no other resource (no customer-managed key, no data sources), so an identity of its own would be unused
  name: name
  location: location
  tags: tags
  kind: kind
  sku: {
    name: 'S0'
  }
  properties: {
    customSubDomainName: name
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
    }
  }
}

output name string = account.name
