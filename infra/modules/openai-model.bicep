// On an Azure OpenAI account (new or existing, in this module's resource group): the realtime model
// deployment and the input-transcription deployment (each optional), and the role that lets the app's
// identity, and optionally a developer, call them.

@description('Name of the Azure OpenAI / AI Services account.')
param accountName string

@description('Create (or update) the model deployment; false when the account already has it.')
param createDeployment bool = true

@description('Name of the deployment; the app passes it as the realtime "model".')
param deploymentName string

@description('Model to deploy.')
param modelName string

@description('Model version.')
param modelVersion string

@description('Deployment SKU, e.g. GlobalStandard.')
param skuName string

@description('Deployment capacity, in units of the SKU (thousands of tokens per minute for GlobalStandard).')
@minValue(1)
param capacity int

@description('Create (or update) the input-transcription deployment; false when the account already has it.')
param createTranscriptionDeployment bool = true

@description('Name of the input-transcription deployment; on Azure the realtime session names this deployment (REALTIME_TRANSCRIPTION_MODEL), not a model.')
param transcriptionDeploymentName string

@description('Transcription model to deploy.')
param transcriptionModelName string

@description('Version of the transcription model.')
param transcriptionModelVersion string

@description('Deployment SKU of the transcription model, e.g. GlobalStandard.')
param transcriptionSkuName string

@description('Capacity of the transcription deployment, in units of its SKU.')
@minValue(1)
param transcriptionCapacity int

@description('Principal id of the function app\'s managed identity.')
param appPrincipalId string

@description('Principal id of a developer or pipeline that also gets access; empty for none.')
param userPrincipalId string = ''

@description('Type of `userPrincipalId`.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param userPrincipalType string = 'User'

// Cognitive Services OpenAI User: call deployments (inference), nothing else.
var openAiUserRoleId = '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd'

resource account 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = {
  name: accountName
}

resource deployment 'Microsoft.CognitiveServices/accounts/deployments@2024-10-01' = if (createDeployment) {
  parent: account
  name: deploymentName
  sku: {
    name: skuName
    capacity: capacity
  }
  properties: {
    model: {
      format: 'OpenAI'
      name: modelName
      version: modelVersion
    }
    versionUpgradeOption: 'OnceCurrentVersionExpired'
  }
}

// Deployments of one account are created one at a time, hence the dependency.
resource transcription 'Microsoft.CognitiveServices/accounts/deployments@2024-10-01' = if (createTranscriptionDeployment) {
  parent: account
  name: transcriptionDeploymentName
  sku: {
    name: transcriptionSkuName
    capacity: transcriptionCapacity
  }
  properties: {
    model: {
      format: 'OpenAI'
      name: transcriptionModelName
      version: transcriptionModelVersion
    }
    versionUpgradeOption: 'OnceCurrentVersionExpired'
  }
  dependsOn: [
    deployment
  ]
}

resource appOpenAiUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, appPrincipalId, openAiUserRoleId)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', openAiUserRoleId)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource userOpenAiUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(account.id, userPrincipalId, openAiUserRoleId)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', openAiUserRoleId)
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}

// The OpenAI endpoint of the account (both kinds serve it); the app appends /openai/v1/realtime.
output endpoint string = 'https://${account.properties.customSubDomainName}.openai.azure.com'
output name string = account.name
